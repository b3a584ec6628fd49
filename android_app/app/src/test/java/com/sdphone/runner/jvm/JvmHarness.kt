package com.sdphone.runner.jvm

import com.sdphone.runner.demo.DemoScheduler
import com.sdphone.runner.protocol.Json
import com.sdphone.runner.protocol.RunRequest
import com.sdphone.runner.runner.Runner
import java.io.File

/**
 * Command-line entry for tests/apps/test_android_app.py (JVM, no Android):
 *   run <run_dir>                        run the folder with the fake backend; print the component models'
 *                                        ledger ({"loads", "peak_live", "live_at_end"}), then the status JSON
 *   parse <request.json>                 parse + check a request, print it back as JSON (or the error)
 *   table <name> <steps> <karras> <dim>  print DemoScheduler.table as JSON
 */
fun main(args: Array<String>) {
    when (args.getOrNull(0)) {
        "run" -> {
            val factory = FakeBackendFactory()
            val st = Runner(JvmPlatform(), factory).run(File(args[1]))
            println(Json.write(factory.ledger.toJson()))
            println(Json.write(st.toJson()))
        }
        "parse" -> {
            try {
                val r = RunRequest.parse(File(args[1]).readText())
                println(Json.write(RunRequest.toJson(r)))
            } catch (e: Exception) {
                println(Json.write(mapOf("error" to e.message)))
            }
        }
        "table" -> {
            val t = DemoScheduler.table(args[1], args[2].toInt(), args[3].toBoolean(), args[4].toInt())
            val m = linkedMapOf<String, Any?>(
                "init_scale" to t.initScale, "timestep" to t.timestep.toList(), "in_scale" to t.inScale.toList(),
                "d_x" to t.dX.toList(), "d_eps" to t.dEps.toList(), "x_x" to t.xX.toList(), "x_d" to t.xD.toList(),
                "x_dprev" to t.xDprev.toList(), "sigmas" to t.sigmas.toList(), "t_emb" to t.tEmb.map { it.toList() },
            )
            println(Json.write(m))
        }
        else -> {
            System.err.println("usage: run <run_dir> | parse <request.json> | table <name> <steps> <karras> <dim>")
            System.exit(2)
        }
    }
}
