package com.sdphone.runner

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Surface
import com.sdphone.runner.demo.DemoViewModel
import com.sdphone.runner.ui.DemoScreen

/** The demo screen: generate from the latest host-pushed request with your own steps and seed. */
class MainActivity : ComponentActivity() {
    private val vm: DemoViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        // Creates /sdcard/Android/data/com.sdphone.runner/files (and runs/) so that adb can push into it.
        getExternalFilesDir("runs")
        setContent {
            MaterialTheme {
                Surface {
                    DemoScreen(vm)
                }
            }
        }
    }

    override fun onResume() {
        super.onResume()
        vm.refreshSource()
    }
}
