import Foundation
import NFTModel
import SvcnatCore
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

/// kube-proxy's iptables dumps against svcnat's `--format iptables`, rule by rule (issue 11).
/// Each case is a kube-proxy test's Services and EndpointSlices as manifests, its fake
/// proxier's settings as svcnat's flags, and its expected dump, all as data under
/// Fixtures/kube-proxy/.
///
/// The normalisation, stated once: only KUBE-* chains are compared (kube-proxy's tests leave
/// out the jumps from the built-in chains); each chain's rules in order; within a rule, its
/// option groups (`-m tcp`, `-d 1.2.3.4`, `! -s 10.0.0.0/8`, `--comment X`) as a sorted list,
/// so argument order does not count; quotes, a /32 host mask and iptables-save's printed
/// defaults (`--reject-with icmp-port-unreachable`, `--mask 255.255.255.255 --rsource`) dropped;
/// `--or-mark M` and `--xor-mark M` read as the `--set-xmark M/M` and `M/0x0` iptables-save
/// prints; probabilities compared to five places; nfacct counters (`-m nfacct`, an optional
/// kube-proxy metric) dropped; `MASQUERADE --random-fully` read as `MASQUERADE` (kube-proxy's
/// fake iptables lacks random-fully; svcnat always asks for it).
///
/// Deliberate differences, removed from kube-proxy's side with the reason:
/// - localhost NodePorts (`-d 127.0.0.0/8` rules in nat KUBE-NODEPORTS): svcnat serves node ports
///   on the node's addresses only, never on 127.0.0.0/8, as kube-proxy's nftables mode does
///   (route_localnet exposes localhost services to the network).
@Suite struct Conformance {
    static let dir = fixtures + "/kube-proxy"

    /// "table/chain" -> its rules, normalised.
    typealias Dump = [String: [[String]]]

    static func words(_ line: Substring) -> [String] {
        var out: [String] = [], cur = "", quoted = false, any = false
        for c in line {
            if c == "\"" { quoted.toggle(); any = true; continue }
            if c == " " && !quoted {
                if any || !cur.isEmpty { out.append(cur) }
                cur = ""; any = false
            } else {
                cur.append(c)
            }
        }
        if any || !cur.isEmpty { out.append(cur) }
        return out
    }

    static func normalised(_ args: [String]) -> [String] {
        var groups: [[String]] = []
        var i = 0
        while i < args.count {
            var g: [String] = []
            if args[i] == "!" { g.append("!"); i += 1 }
            guard i < args.count else { break }
            g.append(args[i]); i += 1
            while i < args.count, !args[i].hasPrefix("-"), args[i] != "!" { g.append(args[i]); i += 1 }
            groups.append(g)
        }
        var out: [String] = []
        for var g in groups {
            if let opt = g.first(where: { $0 != "!" }), ["-s", "-d"].contains(opt), g.last?.hasSuffix("/32") == true {
                g[g.count - 1] = String(g[g.count - 1].dropLast(3))
            }
            switch g {
            case ["--reject-with", "icmp-port-unreachable"], ["--mask", "255.255.255.255"], ["--rsource"], ["-m", "nfacct"],
                ["--random-fully"]:
                continue
            default: break
            }
            if g.first == "--nfacct-name" { continue }
            if g.first == "--or-mark", g.count == 2 { g = ["--set-xmark", "\(g[1])/\(g[1])"] }
            if g.first == "--xor-mark", g.count == 2 { g = ["--set-xmark", "\(g[1])/0x0"] }
            if g.first == "--probability", g.count == 2, let p = Double(g[1]) { g[1] = String(format: "%.5f", p) }
            out.append(g.joined(separator: " "))
        }
        return out.sorted()
    }

    /// The KUBE-* chains of an iptables-restore text, normalised; `declared` lists them.
    static func dump(_ text: String) -> (rules: Dump, declared: Set<String>) {
        var rules: Dump = [:], declared = Set<String>()
        var table = ""
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            if line.hasPrefix("*") { table = String(line.dropFirst()); continue }
            if line.hasPrefix(":KUBE-") { declared.insert(table + "/" + String(line.dropFirst().split(separator: " ")[0])) }
            guard line.hasPrefix("-A KUBE-") else { continue }
            let w = words(line)
            rules[table + "/" + w[1], default: []].append(normalised(Array(w.dropFirst(2))))
        }
        return (rules, declared)
    }

    /// What svcnat renders for a case's manifests and flags.
    static func rendered(_ name: String, _ config: ProxyConfig) throws -> String {
        let input = try ManifestSource.load([dir + "/\(name).yaml"])
        let tables = try Reconciler.desiredTables(input.state, config: config)
        return IptablesRenderer(config.translator).render(tables[0].proxy)
    }

    static func expected(_ name: String, removing deliberate: (String) -> Bool) throws -> String {
        try String(contentsOfFile: dir + "/\(name).iptables", encoding: .utf8).split(separator: "\n").filter { !deliberate(String($0)) }
            .joined(separator: "\n")
    }

    /// Every chain of both, rule by rule: the differences, one line each.
    static func differences(_ want: String, _ got: String) -> [String] {
        let (w, wd) = dump(want), (g, gd) = dump(got)
        var out: [String] = []
        for c in wd.symmetricDifference(gd).sorted() { out.append("\(c): declared by \(wd.contains(c) ? "kube-proxy" : "svcnat") only") }
        for c in Set(w.keys).union(g.keys).sorted() where w[c] != g[c] {
            out.append("\(c):\n  kube-proxy: \(w[c] ?? [])\n  svcnat:     \(g[c] ?? [])")
        }
        return out
    }

    static func localhostNodePorts(_ line: String) -> Bool { line.hasPrefix("-A KUBE-NODEPORTS") && line.contains("-d 127.0.0.0/8") }

    @Test func testOverallIPTablesRules() throws {
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        let got = try Self.rendered("TestOverallIPTablesRules", config)
        let want = try Self.expected("TestOverallIPTablesRules", removing: Self.localhostNodePorts)
        let diff = Self.differences(want, got)
        #expect(diff.isEmpty, "\(diff.joined(separator: "\n"))")
        // The comparison can fail: one rule's argument changed is one difference.
        #expect(Self.differences(want, got.replacingOccurrences(of: "--dport 3003", with: "--dport 3004")).count == 1)
    }
}
