package com.sdphone.runner.runner

import java.io.ByteArrayOutputStream
import java.io.DataOutputStream
import java.io.File
import java.io.FileInputStream
import java.io.FileOutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import java.util.zip.CRC32
import java.util.zip.Deflater

/** Lower-case hex sha256 of a file, streamed (model files are gigabytes). */
fun fileSha256(file: File): String {
    val md = MessageDigest.getInstance("SHA-256")
    val buf = ByteArray(1 shl 20)
    FileInputStream(file).use { s ->
        while (true) {
            val n = s.read(buf)
            if (n < 0) break
            md.update(buf, 0, n)
        }
    }
    return md.digest().joinToString("") { String.format("%02x", it.toInt() and 0xff) }
}

fun bytesSha256(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { String.format("%02x", it.toInt() and 0xff) }

/** [file] must exist and, when [sha256] is given, hash to it; failures name the file. */
fun verifyFile(file: File, sha256: String?, what: String) {
    if (!file.isFile) {
        throw RunnerError("$file: $what file not found")
    }
    if (sha256 != null) {
        val actual = fileSha256(file)
        if (actual != sha256) {
            throw RunnerError("$file: sha256 mismatch ($what): request has ${sha256.take(16)}..., file has ${actual.take(16)}...")
        }
    }
}

/** float32 little-endian bytes to floats (noise.bin). */
fun floatsFromLeBytes(bytes: ByteArray): FloatArray {
    val fb = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
    val out = FloatArray(fb.remaining())
    fb.get(out)
    return out
}

/** floats to float32 little-endian bytes (image.f32, demo noise.bin). */
fun floatsToLeBytes(data: FloatArray): ByteArray {
    val bb = ByteBuffer.allocate(data.size * 4).order(ByteOrder.LITTLE_ENDIAN)
    bb.asFloatBuffer().put(data)
    return bb.array()
}

/** Writes [bytes] and fsyncs. */
fun writeBytesSynced(file: File, bytes: ByteArray) {
    FileOutputStream(file).use { s ->
        s.write(bytes)
        s.flush()
        s.fd.sync()
    }
}

/** A minimal PNG encoder: 8-bit RGB, no interlace, filter 0 on every row, zlib level 6. */
object Png {
    fun encodeRgb(width: Int, height: Int, rgb: ByteArray): ByteArray {
        require(rgb.size == width * height * 3) { "rgb must hold width * height * 3 bytes" }
        val raw = ByteArray(height * (1 + width * 3))
        for (y in 0 until height) {
            val o = y * (1 + width * 3)
            raw[o] = 0
            System.arraycopy(rgb, y * width * 3, raw, o + 1, width * 3)
        }
        val deflater = Deflater(6)
        deflater.setInput(raw)
        deflater.finish()
        val z = ByteArrayOutputStream()
        val buf = ByteArray(1 shl 16)
        while (!deflater.finished()) {
            val n = deflater.deflate(buf)
            z.write(buf, 0, n)
        }
        deflater.end()

        val out = ByteArrayOutputStream()
        out.write(byteArrayOf(0x89.toByte(), 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A))
        val ihdr = ByteArrayOutputStream()
        DataOutputStream(ihdr).apply {
            writeInt(width)
            writeInt(height)
            writeByte(8) // bit depth
            writeByte(2) // colour type: RGB
            writeByte(0) // compression
            writeByte(0) // filter
            writeByte(0) // interlace
        }
        chunk(out, "IHDR", ihdr.toByteArray())
        chunk(out, "IDAT", z.toByteArray())
        chunk(out, "IEND", ByteArray(0))
        return out.toByteArray()
    }

    private fun chunk(out: ByteArrayOutputStream, type: String, data: ByteArray) {
        val d = DataOutputStream(out)
        d.writeInt(data.size)
        val typeBytes = type.toByteArray(Charsets.US_ASCII)
        d.write(typeBytes)
        d.write(data)
        val crc = CRC32()
        crc.update(typeBytes)
        crc.update(data)
        d.writeInt(crc.value.toInt())
    }
}
