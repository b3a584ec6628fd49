import SwiftUI

/// The demo screen: generate on the phone from the host's latest pushed request.
struct DemoView: View {
    @StateObject private var model = DemoModel()

    var body: some View {
        NavigationStack {
            Form {
                Section {
                    TextField("Prompt", text: .constant(model.promptText), axis: .vertical)
                        .disabled(true)
                    Text("Tokens come from the host: the prompt was tokenized there and pushed with the latest \(model.variant.rawValue) run\(model.sourceLabel). To change it, push a new run from the host.")
                        .font(.footnote)
                        .foregroundColor(.secondary)
                } header: {
                    Text("Prompt")
                }

                Section {
                    Picker("Variant", selection: $model.variant) {
                        ForEach(DemoVariant.allCases) { variant in
                            Text(variant.rawValue).tag(variant)
                        }
                    }
                    .pickerStyle(.segmented)
                    Stepper("Steps: \(model.steps)", value: $model.steps, in: 1...50)
                    HStack {
                        Text("Seed")
                        TextField("Seed", value: $model.seed, format: .number)
                            .keyboardType(.numberPad)
                            .multilineTextAlignment(.trailing)
                    }
                    Picker("Accelerator", selection: $model.accelerator) {
                        ForEach(DemoAccelerator.allCases) { accelerator in
                            Text(accelerator.rawValue).tag(accelerator)
                        }
                    }
                    Text("On-device noise differs from the host's: the phone makes it from the seed with its own generator, so the same seed gives a different image than a host run.")
                        .font(.footnote)
                        .foregroundColor(.secondary)
                } header: {
                    Text("Settings")
                }

                Section {
                    Button(model.isRunning ? "Generating..." : "Generate") {
                        model.generate()
                    }
                    .disabled(!model.canGenerate)
                    if model.isRunning || model.stepsDone > 0 {
                        ProgressView(value: model.progress) {
                            Text("Step \(model.stepsDone) of \(model.steps)")
                        }
                    }
                    if !model.phase.isEmpty {
                        Text(model.phase).font(.footnote)
                    }
                }

                if let image = model.image {
                    Section {
                        Image(uiImage: image)
                            .resizable()
                            .interpolation(.none)
                            .scaledToFit()
                    } header: {
                        Text("Image")
                    }
                }

                if !model.timings.isEmpty {
                    Section {
                        ForEach(model.timings) { row in
                            HStack {
                                Text(row.label)
                                Spacer()
                                Text(row.value).monospacedDigit()
                            }
                        }
                    } header: {
                        Text("Timings")
                    }
                }

                if let message = model.errorMessage {
                    Section {
                        Text(message).foregroundColor(.red)
                    } header: {
                        Text("Error")
                    }
                }
            }
            .navigationTitle("SDPhone")
            .toolbar {
                Button("Reload") { model.refresh(variant: model.variant) }
                    .disabled(model.isRunning)
            }
            .onReceive(model.$variant) { variant in
                model.refresh(variant: variant)
            }
        }
    }
}
