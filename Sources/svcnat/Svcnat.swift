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
        version: svcnatVersion,
        subcommands: [Apply.self, Diff.self, Show.self, Cleanup.self, Run.self, ExplainCommand.self, BenchDecode.self]
    )
}

/// What `svcnat --version` prints.
let svcnatVersion = "svcnat 0.1.0 (nftables over netlink; kube-proxy's flags and KubeProxyConfiguration v1alpha1)"

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

/// The manifests' state as it is programmed (allocated where asked), with the input's
/// warnings, what was skipped and what was allocated said on standard error.
func load(_ paths: [String], _ options: CommonOptions) throws -> (input: ManifestSource.Result, state: ClusterState) {
    // What Services hold as allocated in svcnat's tables now stays theirs, so an apply that
    // adds a Service moves no other's address. A read that cannot be made (no root, as a dry
    // run may be) leaves the rule alone to decide.
    var held = Allocation.Held()
    if options.allocate, let tables = try? NetlinkKernel().readTables(options.table) { held = Allocation.Held(tables: tables) }
    return try load(paths, allocation: options.allocation, keeping: held, verbose: options.verbose)
}

func load(_ paths: [String], allocation: Allocation.Settings?, keeping held: Allocation.Held = .init(), verbose: Bool) throws -> (
    input: ManifestSource.Result, state: ClusterState
) {
    let input = try ManifestSource.load(paths)
    let (state, allocated, review) = input.prepared(allocation: allocation, keeping: held)
    for w in input.warnings + review { FileHandle.standardError.write("svcnat: warning: \(w)\n") }
    for line in SkippedObject.summary(input.skipped, verbose: verbose) { FileHandle.standardError.write("svcnat: \(line)\n") }
    for line in allocated?.lines ?? [] { FileHandle.standardError.write("svcnat: \(line)\n") }
    return (input, state)
}

/// The flags the tables in the kernel were applied with, if they say.
func rememberedFlags(_ tables: [Ruleset]) -> AppliedFlags? { tables.lazy.compactMap { AppliedFlags($0) }.first }

@main
enum Main {
    static func main() {
        do {
            // kube-proxy's spellings (and its --config file) become svcnat's flags first.
            let normalized: KubeProxyCompat.Rewritten
            do {
                normalized = try KubeProxyCompat.normalize(Array(CommandLine.arguments.dropFirst())) { path in
                    guard case .text(let t) = ManifestSource.readText(path) else { throw InputError(file: path, message: "cannot be read") }
                    return t
                }
            } catch let e as KubeProxyCompat.Refusal {
                FileHandle.standardError.write("svcnat: error: \(e)\n")
                Foundation.exit(2)
            }
            for w in normalized.warnings { FileHandle.standardError.write("svcnat: warning: \(w)\n") }
            var command = try Svcnat.parseAsRoot(normalized.args)
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
