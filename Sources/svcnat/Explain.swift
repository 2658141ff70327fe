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

        @Option(
            name: .shortAndLong,
            help: "Manifests: the Ingress objects (with --ingress), or the Service asked for (why it has no rules). Repeatable.")
        var filename: [String] = []

        @Option(
            help:
                ArgumentHelp(
                    "The client's address: walk its first packet through the rules. An address of this node means a connection from the "
                        + "node itself.")
        )
        var source: String?

        @Option(help: "nft (a readable tree) or json.")
        var format: ViewFormat = .nft

        @OptionGroup var options: TableOptions
        @OptionGroup var unlisted: UnlistedRuleFlags

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
        }

        func run() throws {
            let query: Explain.Query
            var start = Explainer.Report()
            let manifests = filename.isEmpty ? nil : try load(filename, allocation: nil, verbose: false).state
            if let ingress {
                let slash = ingress.firstIndex(of: "/") ?? ingress.endIndex
                let host = String(ingress[..<slash]), path = slash == ingress.endIndex ? "/" : String(ingress[slash...])
                guard let found = Explainer.ingress(host: host, path: path, in: manifests?.ingresses ?? []) else {
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
                // What the rules really do with it: refused, dropped, or not svcnat's at all.
                let why: String
                if let rule = Explain.unmatched(query, in: tables) {
                    why = rule
                } else if case .service(let ns, let name, _) = query {
                    why = Explain.noRules(for: manifests?.services.first { $0.meta.key == "\(ns)/\(name)" }, namespace: ns, name: name)
                } else {
                    why = "\(destination ?? ingress!) matches no Service svcnat programs; such a connection is not NATed"
                }
                FileHandle.standardError.write("svcnat: \(why)\n")
                throw ExitCode(1)
            }
            if format == .json { print(JSON.array(report.json).text()) } else { print(report.text, terminator: "") }
        }
    }
}
