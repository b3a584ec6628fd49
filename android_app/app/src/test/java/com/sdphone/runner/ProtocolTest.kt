package com.sdphone.runner

import com.sdphone.runner.demo.DemoScheduler
import com.sdphone.runner.protocol.Json
import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.ProtocolError
import com.sdphone.runner.protocol.Residency
import com.sdphone.runner.protocol.RunRequest
import com.sdphone.runner.protocol.RunStatus
import com.sdphone.runner.protocol.SpanRecord
import com.sdphone.runner.runner.Png
import com.sdphone.runner.runner.Tensor
import com.sdphone.runner.runner.toRgb8
import java.io.File
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/**
 * JVM unit tests (`./gradlew :app:testDebugUnitTest`) of the pure-Kotlin protocol code against the
 * repository's golden files. Gradle runs unit tests in the module folder (android_app/app).
 */
class ProtocolTest {
    private val golden = File(System.getProperty("sdphone.golden") ?: "../../host/protocol/golden")

    @Test
    fun goldenRequestRoundTrips() {
        val text = File(golden, "request.json").readText()
        val req = RunRequest.parse(text)
        assertEquals("20261121T233000Z_optimized", req.runId)
        assertEquals(20, req.scheduler.steps)
        assertEquals(2, req.prompt.tokens.size)
        assertEquals(Json.parse(text), Json.parse(Json.write(RunRequest.toJson(req))))
    }

    @Test
    fun unknownKeysAreRejected() {
        val text = File(golden, "request.json").readText().replaceFirst("\"guidance_scale\"", "\"turbo\": 1, \"guidance_scale\"")
        try {
            RunRequest.parse(text)
            fail("an unknown key must fail")
        } catch (e: ProtocolError) {
            assertTrue(e.message!!, e.message!!.contains("turbo"))
        }
    }

    @Test
    fun residencyIsOptionalAndChecked() {
        val text = File(golden, "request.json").readText()
        assertEquals(Residency.ALL, RunRequest.parse(text).runtime.residency)
        val absent = text.replaceFirst(Regex(",\\s*\"residency\":\\s*\"all\""), "")
        assertTrue("the golden request names runtime.residency", absent != text)
        assertEquals(Residency.ALL, RunRequest.parse(absent).runtime.residency)
        val phase = RunRequest.parse(text.replaceFirst("\"residency\": \"all\"", "\"residency\": \"phase\""))
        assertEquals(Residency.PHASE, phase.runtime.residency)
        assertEquals(Residency.PHASE, (RunRequest.toJson(phase)[Keys.Request.RUNTIME] as Map<*, *>)[Keys.Runtime.RESIDENCY])
        try {
            RunRequest.parse(text.replaceFirst("\"residency\": \"all\"", "\"residency\": \"sometimes\""))
            fail("an unknown residency must fail")
        } catch (e: ProtocolError) {
            assertTrue(e.message!!, e.message!!.contains("runtime.residency"))
        }
    }

    @Test
    fun goldenStatusesParse() {
        assertEquals("ok", RunStatus.parse(File(golden, "status.json").readText()).state)
        assertEquals("error", RunStatus.parse(File(golden, "status_error.json").readText()).state)
        assertEquals("running", RunStatus.parse(File(golden, "status_running.json").readText()).state)
    }

    @Test
    fun demoSchedulerReproducesTheHostTable() {
        val req = RunRequest.parse(File(golden, "request.json").readText())
        val s = req.scheduler
        val t = DemoScheduler.table(s.name, s.steps, s.karras, s.tEmb[0].size)
        val pairs = listOf(s.timestep to t.timestep, s.inScale to t.inScale, s.dX to t.dX, s.dEps to t.dEps, s.xX to t.xX,
            s.xD to t.xD, s.xDprev to t.xDprev, s.sigmas to t.sigmas)
        for ((want, got) in pairs) {
            assertArrayEquals(want, got, 1e-9)
        }
        for (i in s.tEmb.indices) {
            assertArrayEquals(s.tEmb[i], t.tEmb[i], 0.0)
        }
    }

    @Test
    fun spanRecordsKeepNullFields() {
        val line = Json.write(SpanRecord(1.0, "text_encoder", "component", 0.5, 0.5, null, null, 0, false).toJson())
        assertEquals(
            "{\"type\":\"span\",\"t\":1.0,\"name\":\"text_encoder\",\"cat\":\"component\",\"start\":0.5,\"dur\":0.5," +
                "\"component\":null,\"step\":null,\"repeat\":0,\"warmup\":false}",
            line,
        )
    }

    @Test
    fun imageConversionRoundsHalfToEven() {
        // (x + 1) / 2 * 255 = 127.5 exactly for x = 1/255: numpy's rint gives 128 (even), 0.5 -> 0.
        val img = Tensor.F32(intArrayOf(1, 3, 1, 2), floatArrayOf(1f / 255f, -1f, 2f, -2f, 0f, 1f))
        val rgb = toRgb8(img)
        assertEquals(6, rgb.size)
        assertEquals(255, rgb[1].toInt() and 0xff) // pixel 0, green = 2 clipped
        assertEquals(0, rgb[3].toInt() and 0xff) // pixel 1, red = -1
        assertTrue(Png.encodeRgb(2, 1, rgb).size > 8)
    }
}
