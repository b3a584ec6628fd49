package com.sdphone.runner

/**
 * Everything the Python host needs to drive this app over adb, in one place.
 *
 * The same values are in `android_app/host_contract.json`, which the host reads; the key of each value
 * there is the lower-cased name of the constant here (PACKAGE_ID -> "package_id").
 * tests/apps/test_android_app.py fails when the two disagree. Keep every value a plain string literal.
 *
 * How the host runs a prepared run folder (docs/protocol.md):
 * ```
 * adb push <run> /sdcard/Android/data/com.sdphone.runner/files/runs/<id>
 * adb shell am start -n com.sdphone.runner/.HeadlessRunActivity \
 *     --es run_dir /sdcard/Android/data/com.sdphone.runner/files/runs/<id>
 * adb logcat -s SdPhoneRunner:I      # until a line starting with RUN_FINISHED for that run_dir
 * adb pull /sdcard/Android/data/com.sdphone.runner/files/runs/<id>   # trace.jsonl, image.png, ...
 * ```
 */
object HostContract {
    /** applicationId (and namespace) of the app. */
    const val PACKAGE_ID = "com.sdphone.runner"

    /** The headless entry point, relative to the package, as `am start -n PACKAGE_ID/HEADLESS_ACTIVITY` takes it. */
    const val HEADLESS_ACTIVITY = ".HeadlessRunActivity"

    /** Intent string extra: absolute path of the run folder on the device (required). */
    const val EXTRA_RUN_DIR = "run_dir"

    /** Intent string extra: which engine executes the run (optional, default ENGINE_LITERT). */
    const val EXTRA_ENGINE = "engine"

    /** Intent string extra: folder of MediaPipe Image Generator weights (optional, default DEVICE_MEDIAPIPE_MODEL_DIR). */
    const val EXTRA_MEDIAPIPE_MODEL_DIR = "mediapipe_model_dir"

    /** Engine value: this project's .tflite models on LiteRT, the protocol's algorithm. */
    const val ENGINE_LITERT = "litert"

    /** Engine value: Google's MediaPipe Image Generator on the same phone, as a peer to compare against. */
    const val ENGINE_MEDIAPIPE = "mediapipe"

    /** logcat tag of every line the app writes for the host (`adb logcat -s SdPhoneRunner:I`). */
    const val LOG_TAG = "SdPhoneRunner"

    /** First word of the line logged when a run starts: `RUN_STARTED run_dir=<dir> engine=<engine>`. */
    const val LOG_STARTED_MARKER = "RUN_STARTED"

    /** First word of progress lines: `RUN_PROGRESS run_dir=<dir> <what>`. */
    const val LOG_PROGRESS_MARKER = "RUN_PROGRESS"

    /** First word of the last line of a run: `RUN_FINISHED run_dir=<dir> state=ok|error message=<one line>`. */
    const val LOG_FINISHED_MARKER = "RUN_FINISHED"

    /** Where the host pushes run folders: the app's external files dir, readable and writable by adb and the app. */
    const val DEVICE_RUNS_ROOT = "/sdcard/Android/data/com.sdphone.runner/files/runs"

    /** Where the host may push model folders shared by several runs (a request's absolute models_dir). */
    const val DEVICE_MODELS_ROOT = "/sdcard/Android/data/com.sdphone.runner/files/models"

    /** Default folder of MediaPipe Image Generator weights (the converter's "bins" output). */
    const val DEVICE_MEDIAPIPE_MODEL_DIR = "/sdcard/Android/data/com.sdphone.runner/files/mediapipe/bins"

    /** Fully qualified name of the headless activity (for code that needs a ComponentName). */
    const val HEADLESS_ACTIVITY_CLASS = "com.sdphone.runner.HeadlessRunActivity"
}
