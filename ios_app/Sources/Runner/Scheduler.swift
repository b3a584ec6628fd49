import Foundation

// The host's scheduler tables (host/schedulers.py make_table) and timestep projection
// (models/timestep.py timestep_embedding), ported for the demo screen, which changes the step count on
// the phone. Headless runs never use this: they run the table the host put in the request.

enum SchedulerTables {
    static let names = ["ddim", "dpmpp_2m", "euler"]

    /// numpy.linspace(start, stop, num): start + i * step, the last value exactly `stop`.
    static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        guard num > 1 else { return num == 1 ? [start] : [] }
        let step = (stop - start) / Double(num - 1)
        var values = (0..<num).map { Double($0) * step + start }
        values[num - 1] = stop
        return values
    }

    /// numpy.interp for increasing `xp`.
    static func interp(_ x: Double, _ xp: [Double], _ fp: [Double]) -> Double {
        let last = xp.count - 1
        if x <= xp[0] { return fp[0] }
        if x >= xp[last] { return fp[last] }
        var lo = 0
        var hi = last
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if xp[mid] <= x { lo = mid } else { hi = mid }
        }
        if x == xp[lo] { return fp[lo] }
        let slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo])
        return slope * (x - xp[lo]) + fp[lo]
    }

    /// abar_t of the "scaled_linear" beta schedule, t = 0..n-1.
    static func alphasCumprod(betaStart: Double = 0.00085, betaEnd: Double = 0.012, n: Int = 1000) -> [Double] {
        var product = 1.0
        return linspace(betaStart.squareRoot(), betaEnd.squareRoot(), n).map { root in
            product *= 1.0 - root * root
            return product
        }
    }

    /// Karras et al. (2022) noise levels, descending from sigmaMax to sigmaMin.
    static func karras(_ sigmaMin: Double, _ sigmaMax: Double, _ steps: Int, rho: Double = 7.0) -> [Double] {
        let lo = pow(sigmaMin, 1.0 / rho)
        let hi = pow(sigmaMax, 1.0 / rho)
        return linspace(0.0, 1.0, steps).map { pow(hi + $0 * (lo - hi), rho) }
    }

    /// Continuous timestep of each sigma: linear interpolation in log-sigma.
    static func sigmaToT(_ sigmas: [Double], _ trainSigmas: [Double]) -> [Double] {
        let logTrain = trainSigmas.map { log($0) }
        let index = (0..<trainSigmas.count).map { Double($0) }
        return sigmas.map { interp(log(max($0, 1e-10)), logTrain, index) }
    }

    /// The scheduler part of a request (t_emb included) for `steps` steps.
    static func make(name: String, steps: Int, karras useKarras: Bool, tEmbWidth: Int) throws -> SchedulerSpec {
        let n = 1000
        guard names.contains(name) else { throw RunnerError("unknown scheduler '\(name)'") }
        guard steps >= 1, steps < n else { throw RunnerError("steps=\(steps): must be between 1 and \(n - 1)") }
        guard !(useKarras && name == "ddim") else { throw RunnerError("karras sigmas are not supported for ddim") }
        let abar = alphasCumprod(n: n)
        let trainSigmas = abar.map { ((1.0 - $0) / $0).squareRoot() }
        let ones = [Double](repeating: 1, count: steps)
        let zeros = [Double](repeating: 0, count: steps)
        var table: SchedulerSpec

        switch name {
        case "ddim":
            let ratio = n / steps
            let t = (0..<steps).reversed().map { $0 * ratio + 1 }
            guard t[0] < n else { throw RunnerError("steps=\(steps) is too many for ddim") }
            let a = t.map { abar[$0] }
            let aPrev = t.map { $0 - ratio >= 0 ? abar[$0 - ratio] : abar[0] }
            let xX = (0..<steps).map { ((1.0 - aPrev[$0]) / (1.0 - a[$0])).squareRoot() }
            table = SchedulerSpec(
                name: name, steps: steps, initScale: 1.0, timestep: t.map { Double($0) }, inScale: ones,
                dX: a.map { 1.0 / $0.squareRoot() }, dEps: a.map { -((1.0 - $0) / $0).squareRoot() }, xX: xX,
                xD: (0..<steps).map { aPrev[$0].squareRoot() - xX[$0] * a[$0].squareRoot() }, xDprev: zeros,
                sigmas: a.map { ((1.0 - $0) / $0).squareRoot() } + [0.0], karras: false, tEmb: [])

        case "euler":
            let index = (0..<n).map { Double($0) }
            var t = Array(linspace(0.0, Double(n - 1), steps).reversed())
            var sig = t.map { interp($0, index, trainSigmas) }
            if useKarras {
                sig = karras(sig[steps - 1], sig[0], steps)
                t = sigmaToT(sig, trainSigmas)
            }
            let s = sig + [0.0]
            let ratio = (0..<steps).map { s[$0 + 1] / s[$0] }
            table = SchedulerSpec(
                name: name, steps: steps, initScale: s.max() ?? 1.0, timestep: t,
                inScale: sig.map { 1.0 / ($0 * $0 + 1.0).squareRoot() }, dX: ones, dEps: sig.map { -$0 },
                xX: ratio, xD: ratio.map { 1.0 - $0 }, xDprev: zeros, sigmas: s, karras: useKarras, tEmb: [])

        default:  // dpmpp_2m
            let t: [Double]
            let sig: [Double]
            if useKarras {
                sig = karras(trainSigmas[0], trainSigmas[n - 1], steps)
                t = sigmaToT(sig, trainSigmas).map { $0.rounded(.toNearestOrEven) }
            } else {
                t = Array(linspace(0.0, Double(n - 1), steps + 1).map { $0.rounded(.toNearestOrEven) }.reversed().dropLast())
                sig = t.map { trainSigmas[Int($0)] }
            }
            let s = sig + [0.0]
            let alpha = s.map { 1.0 / ($0 * $0 + 1.0).squareRoot() }
            let lambda = sig.map { -log($0) }
            var xX = [Double](repeating: 0, count: steps)
            var xD = [Double](repeating: 0, count: steps)
            var xDprev = zeros
            for i in 0..<steps {
                let ratio = s[i + 1] / s[i]
                xX[i] = ratio * alpha[i + 1] / alpha[i]
                let phi = alpha[i + 1] * (1.0 - ratio)
                if i == 0 || i == steps - 1 {
                    xD[i] = phi
                } else {
                    let h = lambda[i + 1] - lambda[i]
                    let r = (lambda[i] - lambda[i - 1]) / h
                    xD[i] = phi * (1.0 + 0.5 / r)
                    xDprev[i] = -phi * 0.5 / r
                }
            }
            table = SchedulerSpec(
                name: name, steps: steps, initScale: 1.0, timestep: t, inScale: ones,
                dX: alpha.dropLast().map { 1.0 / $0 }, dEps: sig.map { -$0 }, xX: xX, xD: xD, xDprev: xDprev,
                sigmas: s, karras: useKarras, tEmb: [])
        }
        table.tEmb = timestepEmbedding(table.timestep, width: tEmbWidth)
        return table
    }

    /// The SD UNet's sinusoidal timestep projection: [cos(t * f_k), sin(t * f_k)],
    /// f_k = exp(-ln(10000) * k / (width / 2)), zero-padded when `width` is odd; rounded to float32.
    static func timestepEmbedding(_ timesteps: [Double], width: Int) -> [[Double]] {
        let half = width / 2
        let freqs = (0..<half).map { exp(-log(10000.0) * Double($0) / Double(max(half, 1))) }
        return timesteps.map { t in
            let args = freqs.map { t * $0 }
            var row = args.map { cos($0) } + args.map { sin($0) }
            if width % 2 == 1 { row.append(0) }
            return row.map { Double(Float($0)) }
        }
    }
}
