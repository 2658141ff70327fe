import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatModel

extension Svcnat {
    struct ExplainCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explain",
            abstract: "Show the path a new connection takes, read from what the kernel holds now.",
            discussion: "DEST is IP:PORT[/PROTO], :PORT[/PROTO] for a node port, namespace/name[:port], or name.namespace[.svc.cluster.local][:port].")

        @Argument(help: "Where the connection goes.")
        var destination: String

        @Option(help: "nft (a readable tree) or json.")
        var format: OutputFormat = .nft

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if Explain.parse(destination) == nil { throw ValidationError("\"\(destination)\" is not IP:PORT[/PROTO], namespace/name[:port] or name.namespace") }
            if format == .iptables { throw ValidationError("explain prints nft or json") }
        }

        func run() throws {
            let kernel = try NetlinkKernel()
            guard let ruleset = try kernel.read(table: options.table) else {
                FileHandle.standardError.write("svcnat: no table ip \(options.table) in this network namespace\n")
                throw ExitCode(1)
            }
            let views = Explain.matches(Explain.parse(destination)!, in: ruleset)
            if views.isEmpty {
                FileHandle.standardError.write("svcnat: \(destination) matches no Service svcnat programs; such a connection is not NATed\n")
                throw ExitCode(1)
            }
            if format == .json { print(JSON.array(views.map(\.json)).text()) }
            else { print(views.map { Explain.text($0, in: ruleset) }.joined(separator: "\n"), terminator: "") }
        }
    }
}
