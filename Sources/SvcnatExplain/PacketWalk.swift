import NFTModel
import SvcnatModel

/// Walks the first packet of a new connection through svcnat's table, rule by rule, the way the
/// kernel evaluates it: base chains in hook and priority order, jumps, gotos, returns, verdict
/// maps, marks, the random choices (`numgen`) as branches with their probabilities, DNAT and
/// masquerade. `svcnat explain --source` prints the outcomes; only svcnat's own table is walked
/// (other tables on the host can still change the packet's fate).
public enum PacketWalk {
    public struct Packet: Hashable, Sendable {
        public var source: IPAddress
        public var destination: IPAddress
        public var port: UInt16
        public var proto: TransportProtocol
        public init(source: IPAddress, destination: IPAddress, port: UInt16, proto: TransportProtocol) {
            self.source = source
            self.destination = destination
            self.port = port
            self.proto = proto
        }
    }

    public enum Fate: Hashable, Sendable {
        /// Delivered, DNATed to an endpoint or not NATed at all (nil).
        case accepted(EndpointAddress?)
        case dropped
        case rejected(RejectKind)
        /// A rule svcnat did not write (someone else's edit): the walk cannot go on.
        case unknownRule(String)
    }

    public struct Outcome: Hashable, Sendable {
        public var probability: Double
        public var fate: Fate
        public var masqueraded: Bool
        /// The rules that acted on the packet, as "chain: rule".
        public var trace: [String]
        /// Things the walk could not know (a remembered client of session affinity).
        public var notes: [String]
    }

    /// The packet's state along one branch.
    struct State {
        var probability = 1.0
        var saddr: IPAddress
        var daddr: IPAddress
        var dport: UInt16
        var mark: UInt32 = 0
        var dnat: EndpointAddress?
        var masqueraded = false
        var trace: [String] = []
        var notes: [String] = []
    }

    /// How a chain (or rule) ended for one branch.
    enum Exit: Hashable {
        case next  // no verdict: on to the next rule, or back to the caller
        case returned  // `return`, or the end of a chain reached by goto
        case accept  // accept, or a NAT statement
        case drop
        case reject(RejectKind)
        case unknown(String)
    }

    /// `local`: the node's own addresses (for `fib ... type local`); a source among them means
    /// the connection starts on the node itself (output hook), otherwise it arrives from outside
    /// (prerouting: another host or a pod).
    public static func walk(_ p: Packet, in r: Ruleset, local: Set<IPAddress>) -> [Outcome] {
        let walker = Walker(ruleset: r, packet: p, local: local)
        let fromNode = isLocal(p.source, local)
        var states = [State(saddr: p.source, daddr: p.destination, dport: p.port)]
        var done: [(State, Fate)] = []

        func run(_ hook: Hook, _ keepGoing: (State) -> Bool = { _ in true }) {
            var next: [State] = []
            for s in states {
                guard keepGoing(s) else { next.append(s); continue }
                for (t, exit) in walker.hook(hook, s) {
                    switch exit {
                    case .drop: done.append((t, .dropped))
                    case .reject(let k): done.append((t, .rejected(k)))
                    case .unknown(let text): done.append((t, .unknownRule(text)))
                    case .next, .returned, .accept: next.append(t)
                    }
                }
            }
            states = next
        }
        if fromNode {
            run(.output)
        } else {
            run(.prerouting)
            // After DNAT: delivered to the node, or forwarded.
            run(.input) { walker.isLocal($0.daddr) }
            run(.forward) { !walker.isLocal($0.daddr) }
        }
        run(.postrouting) { fromNode || !walker.isLocal($0.daddr) }
        done += states.map { ($0, .accepted($0.dnat)) }

        // The same fate by different branches is one outcome.
        var merged: [Outcome] = []
        for (s, fate) in done where s.probability > 0 {
            if let i = merged.firstIndex(where: { $0.fate == fate && $0.masqueraded == s.masqueraded }) {
                merged[i].probability += s.probability
            } else {
                merged.append(Outcome(probability: s.probability, fate: fate, masqueraded: s.masqueraded, trace: s.trace, notes: s.notes))
            }
        }
        return merged
    }

    /// What `fib ... type local` answers: one of the node's addresses, or loopback. A walk from
    /// such a source starts in the output hook.
    public static func isLocal(_ ip: IPAddress, _ local: Set<IPAddress>) -> Bool { local.contains(ip) || ip.isLoopback }

    struct Walker {
        let ruleset: Ruleset
        let packet: Packet
        let local: Set<IPAddress>
        let chains: [String: Chain]

        init(ruleset: Ruleset, packet: Packet, local: Set<IPAddress>) {
            self.ruleset = ruleset
            self.packet = packet
            self.local = local
            var c: [String: Chain] = [:]
            for chain in ruleset.chains { c[chain.name] = chain }
            chains = c
        }

        func isLocal(_ ip: IPAddress) -> Bool { PacketWalk.isLocal(ip, local) }

        /// The base chains of one hook, by priority; a branch stops at its first drop or reject.
        func hook(_ hook: Hook, _ s: State) -> [(State, Exit)] {
            let bases = ruleset.chains.filter { $0.base?.hook == hook }.sorted { $0.base!.priority < $1.base!.priority }
            var live: [State] = [s], out: [(State, Exit)] = []
            for chain in bases {
                var next: [State] = []
                for st in live {
                    for (t, exit) in run(chain, st, depth: 0) {
                        switch exit {
                        case .next, .returned, .accept: next.append(t)
                        default: out.append((t, exit))
                        }
                    }
                }
                live = next
            }
            return out + live.map { ($0, .accept) }
        }

        /// Runs a chain's rules from the first. `.next` at the end means the chain ran out.
        func run(_ chain: Chain, _ s: State, depth: Int) -> [(State, Exit)] {
            guard depth < 16 else { return [(s, .unknown("chain nesting deeper than 16 at \(chain.name)"))] }
            var live: [State] = [s], out: [(State, Exit)] = []
            for rule in chain.rules {
                var next: [State] = []
                for st in live {
                    for (t, exit) in evaluate(rule, in: chain.name, st, depth: depth) {
                        if exit == .next { next.append(t) } else { out.append((t, exit)) }
                    }
                }
                live = next
                if live.isEmpty { break }
            }
            return out + live.map { ($0, .next) }
        }

        /// One rule: its items left to right; a branch whose match fails goes on to the next rule.
        func evaluate(_ rule: Rule, in chain: String, _ s: State, depth: Int) -> [(State, Exit)] {
            var branches: [(State, Int)] = [(s, 0)]  // state, index of the next item
            var out: [(State, Exit)] = []
            let text = "\(chain): \(rule.nftText)"
            while let (st, i) = branches.popLast() {
                guard i < rule.items.count else { out.append((st, .next)); continue }
                var t = st
                func match(_ ok: Bool) { if ok { branches.append((t, i + 1)) } else { out.append((t, .next)) } }
                func acted() { if t.trace.last != text { t.trace.append(text) } }
                switch rule.items[i] {
                case .ctStateNew: match(true)
                case .ctStatusDNAT: match(t.dnat != nil)
                case .l4proto(let p): match(p == packet.proto)
                case .ipMatch(let field, let op, let prefix):
                    let hit = prefix.contains(field == .saddr ? t.saddr : t.daddr)
                    match(op == .eq ? hit : !hit)
                case .fibDaddrLocal: match(isLocal(t.daddr))
                case .fibSaddrLocal: match(isLocal(t.saddr))
                case .daddrInSet(let set, _): match(contains(set, [.ip(t.daddr)]))
                case .saddrInSet(let set, _):
                    if ruleset.set(set)?.isDynamic == true {
                        // Its members are the kernel's own (session affinity): not read here.
                        let note = "a client already remembered in @\(set) goes to that set's endpoint"
                        if !t.notes.contains(note) { t.notes.append(note) }
                        match(false)
                    } else {
                        match(contains(set, [.ip(t.saddr)]))
                    }
                case .saddrDaddrIn(let set, _): match(contains(set, [.ip(t.saddr), .ip(t.daddr)]))
                case .rememberSaddr: acted(); match(true)
                case .markIsClear(let m): match(t.mark & m == 0)
                case .markSetOr(let m): t.mark |= m; acted(); match(true)
                case .markSetXor(let m): t.mark ^= m; acted(); match(true)
                case .numgenIsZero(let m):
                    guard m > 0 else { out.append((t, .next)); continue }
                    var hit = t, miss = t
                    hit.probability *= 1 / Double(m)
                    miss.probability *= 1 - 1 / Double(m)
                    if hit.probability > 0 { branches.append((hit, i + 1)) }
                    if miss.probability > 0 { out.append((miss, .next)) }
                case .dnat(let ip, let port):
                    acted()
                    t.dnat = EndpointAddress(ip: ip, port: port)
                    t.daddr = ip
                    t.dport = port
                    out.append((t, .accept))
                case .dnatFromMap(let n, let base, let map, _):
                    acted()
                    let data = Dictionary(
                        ((ruleset.set(map)?.elements) ?? []).compactMap { e -> (UInt32, ElementKey)? in
                            if case .integer(let k)? = e.key.first, let d = e.data { (k, d) } else { nil }
                        }, uniquingKeysWith: { a, _ in a })
                    for k in 0..<n {
                        var b = t
                        b.probability *= 1 / Double(n)
                        if let d = data[base + k], d.count == 2, case .ip(let ip) = d[0], case .port(let port) = d[1] {
                            b.dnat = EndpointAddress(ip: ip, port: port)
                            b.daddr = ip
                            b.dport = port
                            out.append((b, .accept))
                        } else {
                            out.append((b, .next))  // no such key: the statement breaks
                        }
                    }
                case .masquerade:
                    acted()
                    t.masqueraded = true
                    out.append((t, .accept))
                case .reject(let k): acted(); out.append((t, .reject(k)))
                case .dispatch(let map, _):
                    lookup(map, [.ip(t.daddr), .proto(packet.proto), .port(t.dport)], t, text, depth: depth, &out)
                case .nodePortDispatch(let map):
                    lookup(map, [.proto(packet.proto), .port(t.dport)], t, text, depth: depth, &out)
                case .verdict(let v):
                    acted()
                    out += apply(v, t, depth: depth)
                case .raw:
                    out.append((t, .unknown(text)))
                }
            }
            return out
        }

        func contains(_ set: String, _ key: ElementKey) -> Bool {
            ruleset.set(set)?.elements.contains { $0.key == key } ?? false
        }

        /// A verdict map: the element's verdict, or no match.
        func lookup(_ map: String, _ key: ElementKey, _ s: State, _ text: String, depth: Int, _ out: inout [(State, Exit)]) {
            guard let v = ruleset.set(map)?.elements.first(where: { $0.key == key })?.verdict else {
                out.append((s, .next))
                return
            }
            var t = s
            t.trace.append(text + " (\(key.map(\.description).joined(separator: " . ")) : \(v))")
            out += apply(v, t, depth: depth)
        }

        func apply(_ v: Verdict, _ s: State, depth: Int) -> [(State, Exit)] {
            switch v {
            case .accept: return [(s, .accept)]
            case .drop: return [(s, .drop)]
            case .return: return [(s, .returned)]
            case .jump(let c), .goto(let c):
                guard let chain = chains[c] else { return [(s, .unknown("\(v): no such chain"))] }
                return run(chain, s, depth: depth + 1).map { t, exit in
                    switch exit {
                    // Back from a jump: on with the caller's next rule. Back from a goto: the
                    // caller is done too.
                    case .next, .returned:
                        if case .jump = v { return (t, .next) }
                        return (t, .returned)
                    default: return (t, exit)
                    }
                }
            }
        }
    }
}

extension PacketWalk.Outcome {
    /// "1/3", "2/3" or a decimal when the probability is no simple fraction.
    public var probabilityText: String {
        for d in 1...64 {
            let n = (probability * Double(d)).rounded()
            if n >= 1, abs(n / Double(d) - probability) < 1e-9 { return d == 1 ? "1" : "\(Int(n))/\(d)" }
        }
        return String((probability * 10_000).rounded() / 10_000)
    }

    public var summary: String {
        switch fate {
        case .accepted(let ep?): "DNAT to \(ep), " + (masqueraded ? "source masqueraded to the node's address" : "source kept")
        case .accepted(nil): "not NATed by svcnat" + (masqueraded ? " (masqueraded)" : "")
        case .dropped: "dropped"
        case .rejected(.tcpReset): "refused (TCP reset)"
        case .rejected(.icmpPortUnreachable): "refused (ICMP port unreachable)"
        case .rejected(.icmpv6PortUnreachable): "refused (ICMPv6 port unreachable)"
        case .unknownRule(let r): "stopped at a rule svcnat did not write: \(r)"
        }
    }
}
