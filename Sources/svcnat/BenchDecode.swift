import ArgumentParser
import SvcnatSources

extension Svcnat {
    /// Not for operators: scripts/bench-decode's measurement of the decoders on one file.
    struct BenchDecode: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-decode", abstract: "Time svcnat's decoders beside Foundation's and Yams' on one manifest file.",
            shouldDisplay: false)

        @Argument(help: "A manifest file (JSON or YAML).")
        var file: String

        @Option(help: "Runs of each decoder; the best is printed.")
        var runs = 3

        func run() throws { print(try DecodeBenchmark.report(file: file, runs: runs), terminator: "") }
    }
}
