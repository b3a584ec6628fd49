import SwiftUI

@main
struct SDPhoneApp: App {
    private let mode = LaunchMode.from()

    var body: some Scene {
        WindowGroup {
            switch mode {
            case .headless(let runDirectory):
                HeadlessRunView(runDirectory: runDirectory)
            case .invalid(let message):
                HeadlessRunView(launchError: message)
            case .demo:
                DemoView()
            }
        }
    }
}
