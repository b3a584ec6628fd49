package com.sdphone.runner.ui

import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.aspectRatio
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.unit.dp
import com.sdphone.runner.HostContract
import com.sdphone.runner.demo.DemoRequests
import com.sdphone.runner.demo.DemoTimings
import com.sdphone.runner.demo.DemoViewModel
import java.util.Locale

@Composable
fun DemoScreen(vm: DemoViewModel) {
    val st by vm.state.collectAsState()
    val litert = st.engine == HostContract.ENGINE_LITERT
    Column(
        modifier = Modifier.padding(16.dp).verticalScroll(rememberScrollState()),
        verticalArrangement = Arrangement.spacedBy(8.dp),
    ) {
        Text("SD Phone Runner", style = MaterialTheme.typography.titleLarge)

        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            FilterChip(selected = litert, onClick = { vm.setEngine(HostContract.ENGINE_LITERT) }, label = { Text("LiteRT (this project)") })
            FilterChip(selected = !litert, onClick = { vm.setEngine(HostContract.ENGINE_MEDIAPIPE) }, label = { Text("MediaPipe peer") })
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            for (v in DemoRequests.VARIANTS) {
                FilterChip(selected = st.variant == v, onClick = { vm.setVariant(v) }, label = { Text(v) })
            }
        }

        OutlinedTextField(
            value = st.promptText,
            onValueChange = { vm.setPrompt(it) },
            label = { Text("Prompt") },
            readOnly = litert,
            modifier = Modifier.fillMaxWidth(),
        )
        Text(
            if (litert) {
                "The prompt is tokenized on the host: LiteRT runs reuse the tokens of the latest pushed request " +
                    "(${st.sourceRunId ?: "none"}). To change the prompt, push a new request from the host."
            } else {
                "MediaPipe tokenizes the prompt itself (weights in ${HostContract.DEVICE_MEDIAPIPE_MODEL_DIR})."
            },
            style = MaterialTheme.typography.bodySmall,
        )

        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            OutlinedTextField(
                value = st.steps, onValueChange = { vm.setSteps(it) }, label = { Text("Steps") },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number), modifier = Modifier.weight(1f),
            )
            OutlinedTextField(
                value = st.seed, onValueChange = { vm.setSeed(it) }, label = { Text("Seed") },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number), modifier = Modifier.weight(1f),
            )
        }
        Text(
            "Noise is generated on the phone with java.util.Random(seed).nextGaussian(), not the host's numpy " +
                "PCG64: the same seed gives a different image than a host-prepared run. Changed step counts use " +
                "an on-device port of the host's scheduler tables.",
            style = MaterialTheme.typography.bodySmall,
        )

        Button(onClick = { vm.generate() }, enabled = !st.running && st.sourceRunId != null) {
            Text(if (st.running) "Generating…" else "Generate")
        }
        if (st.running && st.totalSteps > 0) {
            LinearProgressIndicator(progress = { st.step.toFloat() / st.totalSteps }, modifier = Modifier.fillMaxWidth())
            Text("step ${st.step}/${st.totalSteps}")
        }
        st.message?.let { Text(it, style = MaterialTheme.typography.bodySmall) }

        st.image?.let {
            Image(bitmap = it.asImageBitmap(), contentDescription = "generated image", modifier = Modifier.fillMaxWidth().aspectRatio(1f))
        }
        st.timings?.let { TimingsTable(it) }
    }
}

@Composable
private fun TimingsTable(t: DemoTimings) {
    fun s(v: Double?) = if (v == null) "-" else String.format(Locale.ROOT, "%.3f s", v)
    Column {
        Text("Timings", style = MaterialTheme.typography.titleMedium)
        Text("model load (all loads): ${s(t.load)}")
        Text("text encoder: ${s(t.textEncoder)}")
        Text("UNet step (median): ${s(t.stepMedian)}")
        Text("VAE decoder: ${s(t.vaeDecoder)}")
        Text("generation (end to end): ${s(t.generation)}")
    }
}
