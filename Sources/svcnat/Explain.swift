import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatHost
import NFTModel
import SvcnatModel
import SvcnatExplain

extension Svcnat {
    struct ExplainCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explain",
            abstract: "Show the path a new connection takes, read from what the kernel holds now.",
            discussion: """
                DEST is IP:PORT[/PROTO] ([IPv6]:PORT for IPv6), :PORT[/PROTO] for a node port, namespace/name[:port], \
                or name.namespace[.svc.cluster.local][:port]. \
                With --ingress HOST/PATH and -f manifests, the Ingress rule picks the Service instead. \
                With --source IP, the first packet from that address is walked through svcnat's rules as the kernel evaluates them: \
                each possible fate with its probability, whether the source is masqueraded, and the rules that acted.
                """)

        @Argument(help: "Where the connection goes (not with --ingress).")
        var destination: String?

        @Option(help: "An Ingress host and path (HOST/PATH); needs -f with the Ingress objects.")
        var ingress: String?

        @Option(name: .shortAndLong, help: "Manifests holding the Ingress objects (with --ingress). Repeatable.")
        var filename: [String] = []

        @Option(
            help:
                ArgumentHelp(
                    "The client's address: walk its first packet through the rules. An address of this node means a connection from the "
                        + "node itself.")
        )
        var source: String?

        @Option(help: "nft (a readable tree) or json.")
        var format: OutputFormat = .nft

        @OptionGroup var options: CommonOptions

        func validate() throws {
            switch (destination, ingress) {
            case (nil, nil): throw ValidationError("give DEST or --ingress HOST/PATH")
            case (_?, _?): throw ValidationError("give DEST or --ingress HOST/PATH, not both")
            case (let d?, nil):
                if Explain.parse(d) == nil {
                    throw ValidationError("\"\(d)\" is not IP:PORT[/PROTO], namespace/name[:port] or name.namespace")
                }
            case (nil, _?):
                if filename.isEmpty { throw ValidationError("--ingress needs -f with the manifests that hold the Ingress objects") }
            }
            if let s = source, IPAddress(s) == nil { throw ValidationError("--source \"\(s)\" is not an IP address") }
            if format == .iptables || format == .ip6tables { throw ValidationError("explain prints nft or json") }
        }

        func run() throws {
            let query: Explain.Query
            var start = Explainer.Report()
            if let ingress {
                let slash = ingress.firstIndex(of: "/") ?? ingress.endIndex
                let host = String(ingress[..<slash]), path = slash == ingress.endIndex ? "/" : String(ingress[slash...])
                guard let found = Explainer.ingress(host: host, path: path, in: try load(filename).ingresses) else {
                    FileHandle.standardError.write("svcnat: no Ingress rule (and no default backend) matches host \(host) path \(path)\n")
                    throw ExitCode(1)
                }
                (query, start) = found
            } else {
                query = Explain.parse(destination!)!
            }

            let tables = try NetlinkKernel().readTables(options.table)
            if tables.isEmpty {
                FileHandle.standardError.write("svcnat: no table ip or ip6 \(options.table) in this network namespace\n")
                throw ExitCode(1)
            }
            let report = Explainer.report(
                query, tables: tables, local: try localIPAddresses(), source: source.flatMap(IPAddress.init),
                into: start)
            if !report.matched {
                FileHandle.standardError.write(
                    "svcnat: \(destination ?? ingress!) matches no Service svcnat programs; such a connection is not NATed\n")
                throw ExitCode(1)
            }
            if format == .json { print(JSON.array(report.json).text()) } else { print(report.text, terminator: "") }
        }
    }
}
