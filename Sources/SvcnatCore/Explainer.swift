import NFTModel
import SvcnatExplain
import SvcnatModel

/// `svcnat explain` without the command line: a query answered from the rulesets the kernel
/// holds, as text and as JSON. The CLI reads the tables and the node's addresses and prints.
public enum Explainer {
    public struct Report: Sendable {
        public var text = ""
        public var json: [JSON] = []
        /// Whether any Service matched the query.
        public var matched = false
        public init() {}
    }

    /// The Service the Ingress rule for host and path sends to, as a query, with the lines that
    /// say so; nil when no rule (and no default backend) matches.
    public static func ingress(host: String, path: String, in ingresses: [Ingress]) -> (query: Explain.Query, report: Report)? {
        guard let found = IngressMatch.find(host: host, path: path, in: ingresses) else { return nil }
        var r = Report()
        r.text =
            "ingress \(found.ingress): \(found.rule) -> Service \(found.namespace)/\(found.backend.service) port \(found.backend.port)\n"
            + "   (the ingress controller proxies the request; its connection to the Service goes as follows)\n"
        r.json = [
            .object([
                ("ingress", .string(found.ingress)), ("rule", .string(found.rule)),
                ("service", .string("\(found.namespace)/\(found.backend.service)")),
                ("port", .string(found.backend.port.description))
            ])
        ]
        return (.service(namespace: found.namespace, name: found.backend.service, port: found.backend.port.description), r)
    }

    /// Every Service port of `tables` that the query names, with its frontends, chain and
    /// endpoints; with a source, the first packet from it walked through the rules to each
    /// destination the Service port is reached at.
    public static func report(
        _ query: Explain.Query, tables: [Ruleset], local: Set<IPAddress>, source: IPAddress?,
        into report: Report = Report()
    ) -> Report {
        var r = report
        let linkLocal = IPPrefix("fe80::/10")!
        for ruleset in tables {
            guard let family = IPFamily(ruleset.family) else { continue }
            let views = Explain.matches(query, in: ruleset, local: local)
            r.matched = r.matched || !views.isEmpty
            // A node port is walked at the node's first address of the family that is not
            // loopback (nor IPv6 link-local).
            let nodeAddress = local.filter { $0.family == family && !$0.isLoopback && !linkLocal.contains($0) }.min()
            for v in views {
                var walks: [JSON] = []
                r.text += Explain.text(v, in: ruleset)
                if let src = source, src.family == family {
                    for (ip, port) in Explain.destinations(query, v, nodeAddress: nodeAddress) {
                        let packet = PacketWalk.Packet(source: src, destination: ip, port: port, proto: v.proto)
                        let outcomes = PacketWalk.walk(packet, in: ruleset, local: local)
                        let fromNode = PacketWalk.isLocal(src, local)
                        r.text += Explain.text(packet, outcomes, fromNode: fromNode)
                        walks.append(Explain.json(packet, outcomes, fromNode: fromNode))
                    }
                }
                var j = v.json
                if case .object(var fields) = j, source != nil { fields.append(("walks", .array(walks))); j = .object(fields) }
                r.json.append(j)
                r.text += "\n"
            }
        }
        return r
    }
}
