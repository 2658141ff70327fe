import ArgumentParser
import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatSources

struct Svcnat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "svcnat",
        abstract: "Kubernetes Service NAT in nftables, programmed over netlink.",
        discussion: """
            svcnat turns Services and their endpoints into nftables NAT rules in its own table \
            (default "svcnat") and keeps the kernel in step with them, one atomic batch per change.
            Exit codes: 0 success, 1 runtime failure (kernel refused, no permission), 2 invalid input or usage.
            """,
        subcommands: [Apply.self, Diff.self, Show.self, Cleanup.self, Run.self, ExplainCommand.self, BenchDecode.self]
    )
}

/// Reports an error that carries its exit code, one line per problem, and exits with it.
enum Failure {
    static func exit(_ error: CommandFailure) -> Never {
        for line in error.description.split(separator: "\n") { FileHandle.standardError.write("svcnat: error: \(line)\n") }
        Foundation.exit(error.exitCode)
    }
}

extension FileHandle {
    func write(_ s: String) { write(s.data(using: .utf8)!) }
}

/// Claims that lose to another Service's: the rest is programmed, these are said on stderr.
func warn(_ conflicts: [Conflict]) {
    for c in conflicts { FileHandle.standardError.write("svcnat: warning: conflict: \(c)\n") }
}

func load(_ paths: [String]) throws -> ClusterState { try loadInput(paths).state }

func loadInput(_ paths: [String]) throws -> ManifestSource.Result {
    let result = try ManifestSource.load(paths)
    for w in result.warnings { FileHandle.standardError.write("svcnat: warning: \(w)\n") }
    return result
}

@main
enum Main {
    static func main() {
        do {
            var command = try Svcnat.parseAsRoot()
            try command.run()
        } catch {
            if let failure = error as? CommandFailure { Failure.exit(failure) }
            let code = Svcnat.exitCode(for: error)
            if code == .success || error is CleanExit {
                print(Svcnat.fullMessage(for: error))
                Foundation.exit(0)
            }
            if let e = error as? ExitCode { Foundation.exit(e.rawValue) }
            FileHandle.standardError.write(Svcnat.fullMessage(for: error) + "\n")
            // Usage errors exit 2, as the contract says (ArgumentParser would use 64).
            Foundation.exit(2)
        }
    }
}
