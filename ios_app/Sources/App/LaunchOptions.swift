import Foundation

/// How the app was started: by the host with a run folder (headless), or by a person (demo screen).
enum LaunchMode {
    case headless(URL)
    case demo
    case invalid(String)

    /// `--run-dir <path>` / `--run-dir=<path>` among the launch arguments, else the environment variable
    /// (both named in HostContract). A relative path is resolved against the app's home folder, so
    /// `Documents/runs/<run_id>` names the folder the host pushed over house_arrest.
    static func from(arguments: [String] = CommandLine.arguments,
                     environment: [String: String] = ProcessInfo.processInfo.environment,
                     home: URL = URL(fileURLWithPath: NSHomeDirectory(), isDirectory: true)) -> LaunchMode
    {
        let flag = HostContract.runDirArgument
        var value: String? = nil
        var index = 1
        while index < arguments.count {
            let argument = arguments[index]
            if argument == flag {
                guard index + 1 < arguments.count, !arguments[index + 1].isEmpty else {
                    return .invalid("\(flag) needs a path (e.g. \(flag) \(HostContract.documentsRunRoot)/<run_id>)")
                }
                value = arguments[index + 1]
                index += 2
                continue
            }
            if argument.hasPrefix(flag + "=") {
                value = String(argument.dropFirst(flag.count + 1))
            }
            index += 1
        }
        if value == nil, let fromEnvironment = environment[HostContract.runDirEnvironment], !fromEnvironment.isEmpty {
            value = fromEnvironment
        }
        guard let path = value else { return .demo }
        if path.isEmpty { return .invalid("\(flag): empty path") }
        return .headless(resolve(path, home: home))
    }

    static func resolve(_ path: String, home: URL) -> URL {
        if path.hasPrefix("/") {
            return URL(fileURLWithPath: path, isDirectory: true).standardizedFileURL
        }
        return home.appendingPathComponent(path, isDirectory: true).standardizedFileURL
    }

    /// The folders of HostContract, under the app's home folder.
    static var runsRoot: URL {
        resolve(HostContract.documentsRunRoot, home: URL(fileURLWithPath: NSHomeDirectory(), isDirectory: true))
    }

    static var demoRoot: URL {
        resolve(HostContract.demoRunRoot, home: URL(fileURLWithPath: NSHomeDirectory(), isDirectory: true))
    }
}
