package com.sdphone.runner.demo

import com.sdphone.runner.protocol.SchedulerName
import com.sdphone.runner.protocol.SchedulerSpec

/**
 * The demo screen's on-device scheduler tables, for step counts the host did not prepare.
 *
 * A port of host/schedulers.py make_table (DDIM "leading", Euler and DPM++ 2M "linspace" or Karras;
 * SD 1.x scaled_linear betas 0.00085..0.012, 1000 training steps) and models/timestep.py
 * timestep_embedding, in float64 like the host. Java's libm may differ from numpy's in the last bit,
 * so a table made here can differ from the host's by an ulp: benchmark runs always use the host's.
 */
object DemoScheduler {
    private const val BETA_START = 0.00085
    private const val BETA_END = 0.012
    private const val TRAIN_STEPS = 1000

    fun linspace(start: Double, stop: Double, num: Int): DoubleArray {
        if (num == 1) return doubleArrayOf(start)
        val step = (stop - start) / (num - 1)
        val y = DoubleArray(num) { it * step + start }
        y[num - 1] = stop
        return y
    }

    fun alphasCumprod(): DoubleArray {
        val b = linspace(Math.sqrt(BETA_START), Math.sqrt(BETA_END), TRAIN_STEPS)
        val out = DoubleArray(TRAIN_STEPS)
        var acc = 1.0
        for (i in 0 until TRAIN_STEPS) {
            val beta = b[i] * b[i]
            acc *= 1.0 - beta
            out[i] = acc
        }
        return out
    }

    /** numpy.interp for increasing [xp]. */
    fun interp(x: Double, xp: DoubleArray, fp: DoubleArray): Double {
        val last = xp.size - 1
        if (x <= xp[0]) return fp[0]
        if (x >= xp[last]) return fp[last]
        var lo = 0
        var hi = last
        while (hi - lo > 1) {
            val mid = (lo + hi) ushr 1
            if (xp[mid] <= x) lo = mid else hi = mid
        }
        val slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo])
        return slope * (x - xp[lo]) + fp[lo]
    }

    private fun karras(sigmaMin: Double, sigmaMax: Double, steps: Int, rho: Double = 7.0): DoubleArray {
        val ramp = linspace(0.0, 1.0, steps)
        val lo = Math.pow(sigmaMin, 1.0 / rho)
        val hi = Math.pow(sigmaMax, 1.0 / rho)
        return DoubleArray(steps) { Math.pow(hi + ramp[it] * (lo - hi), rho) }
    }

    private fun sigmaToT(sigmas: DoubleArray, trainSigmas: DoubleArray): DoubleArray {
        val logTrain = DoubleArray(trainSigmas.size) { Math.log(trainSigmas[it]) }
        val idx = DoubleArray(trainSigmas.size) { it.toDouble() }
        return DoubleArray(sigmas.size) { interp(Math.log(Math.max(sigmas[it], 1e-10)), logTrain, idx) }
    }

    /** The coefficient table for scheduler [name] and [steps] steps, with t_emb rows of width [tEmbDim]. */
    fun table(name: String, steps: Int, karras: Boolean, tEmbDim: Int): SchedulerSpec {
        require(steps in 1 until TRAIN_STEPS) { "steps must be in 1..${TRAIN_STEPS - 1}" }
        require(!(karras && name == SchedulerName.DDIM)) { "karras sigmas are not supported for ddim" }
        val abar = alphasCumprod()
        val n = abar.size
        val trainSigmas = DoubleArray(n) { Math.sqrt((1.0 - abar[it]) / abar[it]) }
        val spec = when (name) {
            SchedulerName.DDIM -> {
                val ratio = n / steps
                val t = IntArray(steps) { (steps - 1 - it) * ratio + 1 }
                require(t[0] < n) { "steps=$steps is too many for ddim" }
                val a = DoubleArray(steps) { abar[t[it]] }
                val aPrev = DoubleArray(steps) { val p = t[it] - ratio; if (p >= 0) abar[p] else abar[0] }
                val xX = DoubleArray(steps) { Math.sqrt((1.0 - aPrev[it]) / (1.0 - a[it])) }
                SchedulerSpec(
                    name = name, steps = steps, initScale = 1.0,
                    timestep = DoubleArray(steps) { t[it].toDouble() },
                    inScale = DoubleArray(steps) { 1.0 },
                    dX = DoubleArray(steps) { 1.0 / Math.sqrt(a[it]) },
                    dEps = DoubleArray(steps) { -Math.sqrt((1.0 - a[it]) / a[it]) },
                    xX = xX,
                    xD = DoubleArray(steps) { Math.sqrt(aPrev[it]) - xX[it] * Math.sqrt(a[it]) },
                    xDprev = DoubleArray(steps),
                    sigmas = DoubleArray(steps + 1) { if (it < steps) Math.sqrt((1.0 - a[it]) / a[it]) else 0.0 },
                    karras = false, tEmb = emptyList(),
                )
            }
            SchedulerName.EULER -> {
                var t = linspace(0.0, (n - 1).toDouble(), steps).reversedArray()
                val idx = DoubleArray(n) { it.toDouble() }
                var sig = DoubleArray(steps) { interp(t[it], idx, trainSigmas) }
                if (karras) {
                    sig = karras(sig[steps - 1], sig[0], steps)
                    t = sigmaToT(sig, trainSigmas)
                }
                val s = DoubleArray(steps + 1) { if (it < steps) sig[it] else 0.0 }
                val ratio = DoubleArray(steps) { s[it + 1] / s[it] }
                SchedulerSpec(
                    name = name, steps = steps, initScale = s.maxOrNull() ?: 0.0,
                    timestep = t,
                    inScale = DoubleArray(steps) { 1.0 / Math.sqrt(sig[it] * sig[it] + 1.0) },
                    dX = DoubleArray(steps) { 1.0 },
                    dEps = DoubleArray(steps) { -sig[it] },
                    xX = ratio,
                    xD = DoubleArray(steps) { 1.0 - ratio[it] },
                    xDprev = DoubleArray(steps),
                    sigmas = s,
                    karras = karras, tEmb = emptyList(),
                )
            }
            SchedulerName.DPMPP_2M -> {
                val t: DoubleArray
                val sig: DoubleArray
                if (karras) {
                    sig = karras(trainSigmas[0], trainSigmas[n - 1], steps)
                    t = sigmaToT(sig, trainSigmas).map { Math.rint(it) }.toDoubleArray()
                } else {
                    val all = linspace(0.0, (n - 1).toDouble(), steps + 1).map { Math.rint(it) }.reversed()
                    t = DoubleArray(steps) { all[it] }
                    sig = DoubleArray(steps) { trainSigmas[t[it].toInt()] }
                }
                val s = DoubleArray(steps + 1) { if (it < steps) sig[it] else 0.0 }
                val alpha = DoubleArray(steps + 1) { 1.0 / Math.sqrt(s[it] * s[it] + 1.0) }
                val lam = DoubleArray(steps) { -Math.log(sig[it]) }
                val xX = DoubleArray(steps)
                val xD = DoubleArray(steps)
                val xDprev = DoubleArray(steps)
                for (i in 0 until steps) {
                    val ratio = s[i + 1] / s[i]
                    xX[i] = ratio * alpha[i + 1] / alpha[i]
                    val phi = alpha[i + 1] * (1.0 - ratio)
                    if (i == 0 || i == steps - 1) {
                        xD[i] = phi
                    } else {
                        val h = lam[i + 1] - lam[i]
                        val r = (lam[i] - lam[i - 1]) / h
                        xD[i] = phi * (1.0 + 0.5 / r)
                        xDprev[i] = -phi * 0.5 / r
                    }
                }
                SchedulerSpec(
                    name = name, steps = steps, initScale = 1.0,
                    timestep = t,
                    inScale = DoubleArray(steps) { 1.0 },
                    dX = DoubleArray(steps) { 1.0 / alpha[it] },
                    dEps = DoubleArray(steps) { -sig[it] },
                    xX = xX, xD = xD, xDprev = xDprev,
                    sigmas = s,
                    karras = karras, tEmb = emptyList(),
                )
            }
            else -> throw IllegalArgumentException("unknown scheduler '$name'")
        }
        return spec.copy(tEmb = timestepEmbedding(spec.timestep, tEmbDim).map { row -> DoubleArray(row.size) { row[it].toDouble() } })
    }

    /** models/timestep.py timestep_embedding: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / half), float32. */
    fun timestepEmbedding(timesteps: DoubleArray, dim: Int): List<FloatArray> {
        val half = dim / 2
        val freqs = DoubleArray(half) { Math.exp(-Math.log(10000.0) * it / Math.max(half, 1)) }
        return timesteps.map { t ->
            val row = FloatArray(dim)
            for (k in 0 until half) {
                val a = t * freqs[k]
                row[k] = Math.cos(a).toFloat()
                row[half + k] = Math.sin(a).toFloat()
            }
            row
        }
    }
}

/**
 * The demo's on-device noise. NOT the host's generator (numpy PCG64 standard_normal): the same seed
 * gives a different image here than in a host-prepared run. Documented in request.noise.generator.
 */
object DemoNoise {
    const val GENERATOR = "java.util.Random(seed).nextGaussian() as float32, NCHW (on-device demo; not the host's numpy PCG64)"

    fun gaussian(seed: Long, size: Int): FloatArray {
        val rng = java.util.Random(seed)
        return FloatArray(size) { rng.nextGaussian().toFloat() }
    }
}
