package com.sdphone.runner

import android.content.Intent
import android.os.Bundle
import android.view.WindowManager
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.mutableStateOf
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import com.sdphone.runner.runner.RunnerError
import java.io.File

/**
 * The host's entry point (HostContract):
 * ```
 * adb shell am start -n com.sdphone.runner/.HeadlessRunActivity \
 *     --es run_dir /sdcard/Android/data/com.sdphone.runner/files/runs/<id> [--es engine litert|mediapipe]
 * ```
 * Runs the folder on a background thread (RunController), keeps the screen on while it runs (a
 * sleeping phone throttles), shows one line of progress, logs to logcat under HostContract.LOG_TAG
 * and finishes itself when the run is done. The results are in the run folder.
 */
class HeadlessRunActivity : ComponentActivity() {
    private val line = mutableStateOf("starting")

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        setContent {
            MaterialTheme {
                Surface(modifier = Modifier.fillMaxSize()) {
                    Column(modifier = Modifier.padding(16.dp)) {
                        Text("SD Phone Runner (headless run)", style = MaterialTheme.typography.titleMedium)
                        Text(line.value, style = MaterialTheme.typography.bodyMedium)
                    }
                }
            }
        }
        if (savedInstanceState == null) {
            handle(intent)
        }
    }

    override fun onNewIntent(intent: Intent) {
        super.onNewIntent(intent)
        handle(intent)
    }

    private fun handle(intent: Intent) {
        val path = intent.getStringExtra(HostContract.EXTRA_RUN_DIR)
        if (path.isNullOrEmpty()) {
            RunController.log("${HostContract.LOG_FINISHED_MARKER} run_dir= state=error message=missing intent extra '${HostContract.EXTRA_RUN_DIR}'")
            finish()
            return
        }
        val engine = intent.getStringExtra(HostContract.EXTRA_ENGINE) ?: HostContract.ENGINE_LITERT
        val mpDir = File(intent.getStringExtra(HostContract.EXTRA_MEDIAPIPE_MODEL_DIR) ?: HostContract.DEVICE_MEDIAPIPE_MODEL_DIR)
        val runDir = try {
            RunController.resolveRunDir(this, path)
        } catch (e: RunnerError) {
            RunController.log("${HostContract.LOG_FINISHED_MARKER} run_dir=$path state=error message=${e.message}")
            finish()
            return
        }
        line.value = "running ${runDir.name} ($engine)"
        RunController.start(
            this, runDir, engine, mpDir,
            onStep = { step, steps -> runOnUiThread { line.value = "running ${runDir.name}: step ${step + 1}/$steps" } },
            onDone = { status ->
                runOnUiThread {
                    line.value = "${status.state}: ${status.message ?: ""}"
                    if (RunController.activeRunDir == null) {
                        finish()
                    }
                }
            },
        )
    }
}
