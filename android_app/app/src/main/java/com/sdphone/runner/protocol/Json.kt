package com.sdphone.runner.protocol

/**
 * A small, dependency-free JSON reader and writer for the protocol files.
 *
 * Values are plain Kotlin: `Map<String, Any?>` (insertion-ordered), `List<Any?>`, `String`, `Long`
 * (numbers without fraction or exponent), `Double`, `Boolean` and `null`. Pure JVM code, so the
 * protocol layer runs unchanged in JVM unit tests. Reading goes through [JsonObj], which tracks the
 * keys it was asked for so that [JsonObj.finish] can reject unknown keys, as the schemas do
 * (`additionalProperties: false`).
 */
class JsonError(message: String) : Exception(message)

object Json {
    /** Parses one JSON document; raises [JsonError] with the offset of the first problem. */
    fun parse(text: String): Any? {
        val p = JsonParser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (!p.atEnd()) {
            throw JsonError("trailing data at offset ${p.pos}")
        }
        return v
    }

    /** Compact JSON (no spaces), keys in map order. Non-finite doubles are written as null. */
    fun write(value: Any?): String {
        val sb = StringBuilder()
        writeTo(sb, value)
        return sb.toString()
    }

    fun writeTo(sb: StringBuilder, value: Any?) {
        when (value) {
            null -> sb.append("null")
            is String -> quote(sb, value)
            is Boolean -> sb.append(if (value) "true" else "false")
            is Int, is Long, is Short, is Byte -> sb.append(value.toString())
            is Float -> number(sb, value.toDouble())
            is Double -> number(sb, value)
            is Map<*, *> -> {
                sb.append('{')
                var first = true
                for ((k, v) in value) {
                    if (!first) {
                        sb.append(',')
                    }
                    first = false
                    quote(sb, k as String)
                    sb.append(':')
                    writeTo(sb, v)
                }
                sb.append('}')
            }
            is Iterable<*> -> {
                sb.append('[')
                var first = true
                for (v in value) {
                    if (!first) {
                        sb.append(',')
                    }
                    first = false
                    writeTo(sb, v)
                }
                sb.append(']')
            }
            is IntArray -> writeTo(sb, value.asList())
            is FloatArray -> writeTo(sb, value.asList())
            is DoubleArray -> writeTo(sb, value.asList())
            is JsonBuilder -> writeTo(sb, value.map)
            else -> throw JsonError("cannot write a ${value::class.java.name} as JSON")
        }
    }

    private fun number(sb: StringBuilder, d: Double) {
        if (d.isNaN() || d.isInfinite()) {
            sb.append("null")
        } else if (d == Math.rint(d) && Math.abs(d) < 1e15) {
            // Integral values keep a ".0" so that readers see a float, as Python's json does.
            sb.append(d.toLong().toString()).append(".0")
        } else {
            sb.append(d.toString())
        }
    }

    private fun quote(sb: StringBuilder, s: String) {
        sb.append('"')
        for (c in s) {
            when (c) {
                '"' -> sb.append("\\\"")
                '\\' -> sb.append("\\\\")
                '\n' -> sb.append("\\n")
                '\r' -> sb.append("\\r")
                '\t' -> sb.append("\\t")
                '\b' -> sb.append("\\b")
                '\u000c' -> sb.append("\\f")
                else -> if (c < ' ') {
                    sb.append(String.format("\\u%04x", c.code))
                } else {
                    sb.append(c)
                }
            }
        }
        sb.append('"')
    }
}

private class JsonParser(private val s: String) {
    var pos = 0

    fun atEnd(): Boolean = pos >= s.length

    fun skipWs() {
        while (pos < s.length && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) {
            pos++
        }
    }

    private fun fail(what: String): Nothing = throw JsonError("$what at offset $pos")

    fun value(): Any? {
        if (atEnd()) {
            fail("unexpected end of input")
        }
        return when (val c = s[pos]) {
            '{' -> obj()
            '[' -> arr()
            '"' -> str()
            't' -> literal("true", true)
            'f' -> literal("false", false)
            'n' -> literal("null", null)
            else -> if (c == '-' || c in '0'..'9') num() else fail("unexpected character '$c'")
        }
    }

    private fun literal(word: String, v: Any?): Any? {
        if (!s.startsWith(word, pos)) {
            fail("bad literal")
        }
        pos += word.length
        return v
    }

    private fun obj(): Map<String, Any?> {
        val out = LinkedHashMap<String, Any?>()
        pos++
        skipWs()
        if (pos < s.length && s[pos] == '}') {
            pos++
            return out
        }
        while (true) {
            skipWs()
            if (atEnd() || s[pos] != '"') {
                fail("expected a key")
            }
            val k = str()
            skipWs()
            if (atEnd() || s[pos] != ':') {
                fail("expected ':'")
            }
            pos++
            skipWs()
            if (out.containsKey(k)) {
                fail("duplicate key \"$k\"")
            }
            out[k] = value()
            skipWs()
            if (atEnd()) {
                fail("unterminated object")
            }
            if (s[pos] == ',') {
                pos++
                continue
            }
            if (s[pos] == '}') {
                pos++
                return out
            }
            fail("expected ',' or '}'")
        }
    }

    private fun arr(): List<Any?> {
        val out = ArrayList<Any?>()
        pos++
        skipWs()
        if (pos < s.length && s[pos] == ']') {
            pos++
            return out
        }
        while (true) {
            skipWs()
            out.add(value())
            skipWs()
            if (atEnd()) {
                fail("unterminated array")
            }
            if (s[pos] == ',') {
                pos++
                continue
            }
            if (s[pos] == ']') {
                pos++
                return out
            }
            fail("expected ',' or ']'")
        }
    }

    private fun str(): String {
        val sb = StringBuilder()
        pos++
        while (true) {
            if (atEnd()) {
                fail("unterminated string")
            }
            val c = s[pos++]
            when {
                c == '"' -> return sb.toString()
                c == '\\' -> {
                    if (atEnd()) {
                        fail("bad escape")
                    }
                    when (val e = s[pos++]) {
                        '"' -> sb.append('"')
                        '\\' -> sb.append('\\')
                        '/' -> sb.append('/')
                        'b' -> sb.append('\b')
                        'f' -> sb.append('\u000c')
                        'n' -> sb.append('\n')
                        'r' -> sb.append('\r')
                        't' -> sb.append('\t')
                        'u' -> {
                            if (pos + 4 > s.length) {
                                fail("bad unicode escape")
                            }
                            sb.append(s.substring(pos, pos + 4).toInt(16).toChar())
                            pos += 4
                        }
                        else -> fail("bad escape '\\$e'")
                    }
                }
                c < ' ' -> fail("control character in string")
                else -> sb.append(c)
            }
        }
    }

    private fun num(): Any {
        val start = pos
        if (s[pos] == '-') {
            pos++
        }
        var integral = true
        while (pos < s.length) {
            val c = s[pos]
            if (c in '0'..'9') {
                pos++
            } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                integral = false
                pos++
            } else {
                break
            }
        }
        val text = s.substring(start, pos)
        try {
            if (integral) {
                return text.toLong()
            }
            return text.toDouble()
        } catch (e: NumberFormatException) {
            pos = start
            fail("bad number '$text'")
        }
    }
}

/**
 * Typed, strict access to one JSON object at [path] (for messages, e.g. "request.json: models.unet").
 * Every accessor records its key; [finish] fails on keys nobody asked for.
 */
class JsonObj(val map: Map<String, Any?>, val path: String) {
    private val seen = HashSet<String>()

    private fun where(key: String) = if (path.isEmpty()) key else "$path.$key"

    private fun bad(key: String, what: String): Nothing = throw JsonError("${where(key)}: $what")

    fun has(key: String): Boolean {
        seen.add(key)
        return map.containsKey(key)
    }

    private fun req(key: String): Any? {
        seen.add(key)
        if (!map.containsKey(key)) {
            bad(key, "missing")
        }
        return map[key]
    }

    fun getString(key: String): String = req(key) as? String ?: bad(key, "must be a string")

    fun optString(key: String): String? = if (has(key)) getString(key) else null

    /** A string or null; the key itself must be present. */
    fun getNullableString(key: String): String? {
        val v = req(key) ?: return null
        return v as? String ?: bad(key, "must be a string or null")
    }

    fun getLong(key: String): Long = req(key) as? Long ?: bad(key, "must be an integer")

    fun getInt(key: String): Int {
        val v = getLong(key)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) {
            bad(key, "out of range")
        }
        return v.toInt()
    }

    fun optInt(key: String): Int? = if (has(key)) getInt(key) else null

    fun getDouble(key: String): Double = when (val v = req(key)) {
        is Long -> v.toDouble()
        is Double -> v
        else -> bad(key, "must be a number")
    }

    fun getBool(key: String): Boolean = req(key) as? Boolean ?: bad(key, "must be a boolean")
    fun optBool(key: String): Boolean? = if (has(key)) getBool(key) else null

    fun getObj(key: String): JsonObj {
        @Suppress("UNCHECKED_CAST")
        val m = req(key) as? Map<String, Any?> ?: bad(key, "must be an object")
        return JsonObj(m, where(key))
    }

    fun getArray(key: String): List<Any?> = req(key) as? List<Any?> ?: bad(key, "must be an array")

    fun getObjects(key: String): List<JsonObj> = getArray(key).mapIndexed { i, v ->
        @Suppress("UNCHECKED_CAST")
        val m = v as? Map<String, Any?> ?: bad(key, "item $i must be an object")
        JsonObj(m, "${where(key)}[$i]")
    }

    fun getInts(key: String): IntArray = getArray(key).mapIndexed { i, v ->
        val n = v as? Long ?: bad(key, "item $i must be an integer")
        if (n < Int.MIN_VALUE || n > Int.MAX_VALUE) {
            bad(key, "item $i out of range")
        }
        n.toInt()
    }.toIntArray()

    fun getDoubles(key: String): DoubleArray = getArray(key).mapIndexed { i, v ->
        when (v) {
            is Long -> v.toDouble()
            is Double -> v
            else -> bad(key, "item $i must be a number")
        }
    }.toDoubleArray()

    /** Rows of numbers, e.g. scheduler.t_emb. */
    fun getDoubleRows(key: String): List<DoubleArray> = getArray(key).mapIndexed { i, row ->
        val items = row as? List<*> ?: bad(key, "row $i must be an array")
        items.mapIndexed { j, v ->
            when (v) {
                is Long -> v.toDouble()
                is Double -> v
                else -> bad(key, "row $i item $j must be a number")
            }
        }.toDoubleArray()
    }

    /** Rows of integers, e.g. prompt.tokens. */
    fun getIntRows(key: String): List<IntArray> = getArray(key).mapIndexed { i, row ->
        val items = row as? List<*> ?: bad(key, "row $i must be an array")
        items.mapIndexed { j, v ->
            val n = v as? Long ?: bad(key, "row $i item $j must be an integer")
            if (n < Int.MIN_VALUE || n > Int.MAX_VALUE) {
                bad(key, "row $i item $j out of range")
            }
            n.toInt()
        }.toIntArray()
    }

    /** Fails on any key that no accessor asked for (the schemas' additionalProperties: false). */
    fun finish(): JsonObj {
        val unknown = map.keys.filter { it !in seen }
        if (unknown.isNotEmpty()) {
            throw JsonError("${if (path.isEmpty()) "top level" else path}: unknown key(s) ${unknown.joinToString(", ")}")
        }
        return this
    }

    companion object {
        /** The top-level object of [text], or a [JsonError] saying why not. */
        fun parse(text: String, path: String): JsonObj {
            @Suppress("UNCHECKED_CAST")
            val m = Json.parse(text) as? Map<String, Any?> ?: throw JsonError("$path: not a JSON object")
            return JsonObj(m, "")
        }
    }
}

/** Builds one JSON object in key order: `json { put(Keys.Span.NAME, "load") }`. */
class JsonBuilder {
    val map = LinkedHashMap<String, Any?>()

    /** Always writes the key, null included (the schemas' nullable-but-required fields). */
    fun put(key: String, value: Any?) {
        map[key] = value
    }

    /** Writes the key only when [value] is not null (optional fields). */
    fun putOpt(key: String, value: Any?) {
        if (value != null) {
            map[key] = value
        }
    }
}

fun json(block: JsonBuilder.() -> Unit): Map<String, Any?> = JsonBuilder().apply(block).map
