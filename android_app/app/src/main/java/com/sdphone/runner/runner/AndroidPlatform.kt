package com.sdphone.runner.runner

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import android.os.Debug
import com.sdphone.runner.BuildConfig
import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.MemoryRecord
import com.sdphone.runner.protocol.MemorySource

/** The device as the trace's meta record describes it, and Android's own memory accounting. */
class AndroidPlatform(context: Context, engineVersion: String = "litert ${BuildConfig.LITERT_VERSION}") : Platform {
    private val app = context.applicationContext

    override val runnerVersion: String = "${BuildConfig.VERSION_NAME} ($engineVersion)"

    override fun deviceInfo(): Map<String, Any?> {
        val am = app.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        val mem = ActivityManager.MemoryInfo()
        am.getMemoryInfo(mem)
        val soc = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) Build.SOC_MODEL else Build.HARDWARE
        val socMaker = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) Build.SOC_MANUFACTURER else null
        return linkedMapOf(
            // ro.product.model, e.g. "SM-S911B": what device_profiles/*.toml [match] model_patterns match.
            Keys.Device.MODEL to Build.MODEL,
            Keys.Device.OS to "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
            Keys.Device.SOC to soc,
            Keys.Device.MANUFACTURER to Build.MANUFACTURER,
            Keys.Device.SOC_MANUFACTURER to socMaker,
            Keys.Device.HARDWARE to Build.HARDWARE,
            Keys.Device.ABI to Build.SUPPORTED_ABIS.firstOrNull(),
            Keys.Device.RAM_BYTES to mem.totalMem,
            Keys.Device.API_LEVEL to Build.VERSION.SDK_INT,
            Keys.Device.FINGERPRINT to Build.FINGERPRINT,
        )
    }

    /**
     * Total PSS of this process from Debug.MemoryInfo (Java + native + graphics, which /proc/self/status
     * VmRSS can miss for GPU memory), source "android_debug", no peak_bytes. Costs a few ms, so it
     * is taken once per generation, not on the sampler's interval.
     */
    override fun debugMemory(t: Double): MemoryRecord? {
        val info = Debug.MemoryInfo()
        Debug.getMemoryInfo(info)
        val pssKb = info.totalPss.toLong()
        if (pssKb <= 0) {
            return null
        }
        return MemoryRecord(t = t, rssBytes = pssKb * 1024, source = MemorySource.ANDROID_DEBUG)
    }
}
