// The names the Python host and this app agree on to drive a run (docs/protocol.md).
//
// Keep in sync with ios_app/host_contract.json (the host reads that file): one constant per key,
// camelCase here, snake_case there. tests/apps/test_ios_app.py fails when the two disagree.

enum HostContract {
    /// The app's bundle identifier (also PRODUCT_BUNDLE_IDENTIFIER in project.yml).
    static let bundleId = "dev.sdphone.runner"
    /// CFBundleVersion of this build (CURRENT_PROJECT_VERSION in project.yml): the host upgrades older installs.
    static let bundleVersion = "1"
    /// Launch argument naming the run folder: `--run-dir Documents/runs/<run_id>` (or `--run-dir=...`).
    static let runDirArgument = "--run-dir"
    /// Environment variable that can name the run folder instead of the launch argument.
    static let runDirEnvironment = "SDPHONE_RUN_DIR"
    /// Where the host pushes run folders, relative to the app's home folder (its data container).
    static let documentsRunRoot = "Documents/runs"
    /// Where the demo screen writes its own run folders, relative to the app's home folder.
    static let demoRunRoot = "Documents/demo"
    /// os_log subsystem and category of the app's log lines.
    static let logSubsystem = "dev.sdphone.runner"
    static let logCategory = "runner"
    /// Prefix of the stdout line that echoes each trace record (memory samples excepted).
    static let stdoutRecordPrefix = "SDPHONE "
    /// `runner` in the trace's meta record.
    static let runner = "ios"
    /// The run protocol version this app speaks.
    static let protocolVersion = 1
    /// Process exit status after a headless run.
    static let exitCodeOk = 0
    static let exitCodeError = 2
}
