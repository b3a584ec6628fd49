import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    // Must equal HostContract.PACKAGE_ID and host_contract.json "package_id" (tests/apps/test_android_app.py).
    namespace = "com.sdphone.runner"
    compileSdk = 35

    defaultConfig {
        applicationId = "com.sdphone.runner"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "1.0.0"
        // Written into every trace's meta.runner_version, e.g. "1.0.0 (litert 2.3.0)".
        buildConfigField("String", "LITERT_VERSION", "\"${libs.versions.litert.get()}\"")
        buildConfigField("String", "MEDIAPIPE_VERSION", "\"${libs.versions.mediapipeImageGenerator.get()}\"")
        ndk {
            // The LiteRT GPU accelerator and MediaPipe's image generator ship arm64 libraries.
            abiFilters += "arm64-v8a"
        }
    }

    buildTypes {
        release {
            // A benchmark build: optimized, debuggable=false, signed with the debug key so that
            // `./gradlew :app:assembleRelease` gives an installable APK without a keystore.
            isMinifyEnabled = false
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"), "proguard-rules.pro")
            signingConfig = signingConfigs.getByName("debug")
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    buildFeatures {
        compose = true
        buildConfig = true
    }
    packaging {
        resources { excludes += "/META-INF/{AL2.0,LGPL2.1}" }
        // Keep native libraries uncompressed and page-aligned (mmap from the APK).
        jniLibs { useLegacyPackaging = false }
    }
    testOptions {
        // JVM unit tests (app/src/test) exercise the pure-Kotlin protocol and pipeline code.
        unitTests.isReturnDefaultValues = true
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    implementation(libs.mediapipe.image.generator)

    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.lifecycle.runtime.ktx)
    implementation(libs.androidx.lifecycle.viewmodel.compose)
    implementation(libs.androidx.activity.compose)
    implementation(platform(libs.androidx.compose.bom))
    implementation(libs.androidx.compose.ui)
    implementation(libs.androidx.compose.ui.graphics)
    implementation(libs.androidx.compose.ui.tooling.preview)
    implementation(libs.androidx.compose.material3)
    debugImplementation(libs.androidx.compose.ui.tooling)

    testImplementation(libs.junit)
}
