import ArgumentParser
import Foundation
import SvcnatCore
import SvcnatHost
import SvcnatModel

extension Svcnat {
    struct ExplainCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explain",
            abstract: "Show the path a new connection takes, read from what the kernel holds now.",
            discussion: """
                DEST is IP:PORT[/PROTO] ([IPv6]:PORT for IPv6), :PORT[/PROTO] for a node port, namespace/name[:port], or name.namespace[.svc.cluster.local][:port]. \
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

        @Option(help: "The client's address: walk its first packet through the rules. An address of this node means a connection from the node itself.")
        var source: String?

        @Option(help: "nft (a readable tree) or json.")
        var format: OutputFormat = .nft

        @OptionGroup var options: CommonOptions

        func validate() throws {
            switch (destination, ingress) {
            case (nil, nil): throw ValidationError("give DEST or --ingress HOST/PATH")
            case (_?, _?): throw ValidationError("give DEST or --ingress HOST/PATH, not both")
            case (let d?, nil):
                if Explain.parse(d) == nil { throw ValidationError("\"\(d)\" is not IP:PORT[/PROTO], namespace/name[:port] or name.namespace") }
            case (nil, _?):
                if filename.isEmpty { throw ValidationError("--ingress needs -f with the manifests that hold the Ingress objects") }
            }
            if let s = source, IPAddress(s) == nil { throw ValidationError("--source \"\(s)\" is not an IP address") }
            if format == .iptables || format == .ip6tables { throw ValidationError("explain prints nft or json") }
        }

        func run() throws {
            var out: [JSON] = []
            var text = ""
            let query: Explain.Query
            if let ingress {
                let slash = ingress.firstIndex(of: "/") ?? ingress.endIndex
                let host = String(ingress[..<slash]), path = slash == ingress.endIndex ? "/" : String(ingress[slash...])
                let state = try load(filename)
                guard let found = IngressMatch.find(host: host, path: path, in: state.ingresses) else {
                    FileHandle.standardError.write("svcnat: no Ingress rule (and no default backend) matches host \(host) path \(path)\n")
                    throw ExitCode(1)
                }
                text += "ingress \(found.ingress): \(found.rule) -> Service \(found.namespace)/\(found.backend.service) port \(found.backend.port)\n"
                text += "   (the ingress controller proxies the request; its connection to the Service goes as follows)\n"
                out.append(.object([("ingress", .string(found.ingress)), ("rule", .string(found.rule)),
                                    ("service", .string("\(found.namespace)/\(found.backend.service)")),
                                    ("port", .string(found.backend.port.description))]))
                query = .service(namespace: found.namespace, name: found.backend.service, port: found.backend.port.description)
            } else {
                query = Explain.parse(destination!)!
            }

            let kernel = try NetlinkKernel()
            let tables = try kernel.readTables(options.table)
            if tables.isEmpty {
                FileHandle.standardError.write("svcnat: no table ip or ip6 \(options.table) in this network namespace\n")
                throw ExitCode(1)
            }
            let local = try localIPAddresses()
            let linkLocal = IPPrefix("fe80::/10")!
            var matched = false
            for ruleset in tables {
                let family = IPFamily(ruleset.family)!
                let views = Explain.matches(query, in: ruleset, local: local)
                matched = matched || !views.isEmpty
                // A node port is walked at the node's first address of the family that is not
                // loopback (nor IPv6 link-local).
                let nodeAddress = local.filter { $0.family == family && !$0.isLoopback && !linkLocal.contains($0) }.min()
                for v in views {
                    var walks: [JSON] = []
                    text += Explain.text(v, in: ruleset)
                    if let source, let src = IPAddress(source), src.family == family {
                        for (ip, port) in Explain.destinations(query, v, nodeAddress: nodeAddress) {
                            let packet = PacketWalk.Packet(source: src, destination: ip, port: port, proto: v.proto)
                            let outcomes = PacketWalk.walk(packet, in: ruleset, local: local)
                            let fromNode = PacketWalk.isLocal(src, local)
                            text += Explain.text(packet, outcomes, fromNode: fromNode)
                            walks.append(Explain.json(packet, outcomes, fromNode: fromNode))
                        }
                    }
                    var j = v.json
                    if case .object(var fields) = j, source != nil { fields.append(("walks", .array(walks))); j = .object(fields) }
                    out.append(j)
                    text += "\n"
                }
            }
            if !matched {
                FileHandle.standardError.write("svcnat: \(destination ?? ingress!) matches no Service svcnat programs; such a connection is not NATed\n")
                throw ExitCode(1)
            }
            if format == .json { print(JSON.array(out).text()) } else { print(text, terminator: "") }
        }
    }
}
