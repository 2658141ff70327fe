import ArgumentParser
import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatHost

/// The table a command works on: every subcommand has it.
struct TableOptions: ParsableArguments {
    @Option(help: "The nftables table svcnat owns (families ip and ip6).")
    var table = "svcnat"

    func validate() throws {
        if let why = CommonOptions.tableNameProblem(table) { throw ValidationError("--table \"\(table)\": \(why)") }
    }
}

/// The flags that shape the rules (apply, diff, run); names follow kube-proxy where it has them.
struct CommonOptions: ParsableArguments {
    @OptionGroup var tableOptions: TableOptions
    var table: String { tableOptions.table }

    @Option(help: "The node this runs on (default: the hostname); decides which endpoints are local.")
    var nodeName: String?

    @Option(help: "This node's zone: EndpointSlice topology hints (hints.forZones) are followed when every endpoint has them.")
    var nodeZone: String?

    @Option(name: .customLong("cluster-cidr"), help: "The pods' CIDR; traffic to a Service from outside it is masqueraded. Repeatable.")
    var clusterCIDR: [String] = []

    @Option(
        name: .customLong("nodeport-addresses"),
        help: "CIDRs of node addresses that serve node ports. Repeatable. Default: every local address but 127.0.0.0/8.")
    var nodePortAddresses: [String] = []

    @Option(
        name: .customLong("service-cidr"),
        help: "The Service CIDR: traffic to one of its addresses that no Service has is dropped. Repeatable.")
    var serviceCIDR: [String] = []

    @Flag(help: "Masquerade all traffic sent to Services.")
    var masqueradeAll = false

    @Option(
        help:
            ArgumentHelp(
                "How a Service chain picks an endpoint: map (one rule, endpoints as elements of shared maps; the default) or cascade "
                    + "(one rule per endpoint, probability 1/(n-i)).")
    )
    var endpointSelection: EndpointSelection?

    @Flag(
        help: ArgumentHelp(
            "Manifests mode: give a Service without clusterIP an address from the first --service-cidr of its family, and a "
                + "NodePort or LoadBalancer port without nodePort one from --service-node-port-range; stable (README: From plain "
                + "manifests)."))
    var allocate = false

    @Option(help: "With --allocate: the node ports to allocate from, as the API server's flag (FIRST-LAST).")
    var serviceNodePortRange = "30000-32767"

    @Flag(name: [.short, .long], help: "Print the transaction sent to the kernel, and list every object skipped.")
    var verbose = false

    @Flag(
        help: ArgumentHelp(
            "kube-proxy's: set net.netfilter.nf_conntrack_tcp_be_liberal=1 in this network namespace (run and apply), and leave "
                + "kube-proxy's INVALID drop out of --format iptables (which includes it unless the sysctl is set)."))
    var conntrackTcpBeLiberal = false

    mutating func validate() throws {
        for c in clusterCIDR where IPPrefix(c) == nil {
            throw ValidationError("--cluster-cidr \"\(c)\" is not a CIDR such as 198.19.0.0/16 or 2001:db8:1::/48")
        }
        for c in nodePortAddresses where IPPrefix(c) == nil {
            throw ValidationError("--nodeport-addresses \"\(c)\" is not a CIDR")
        }
        for c in nodePortAddresses where IPPrefix(c)?.length == 0 {
            throw ValidationError("--nodeport-addresses \"\(c)\": leave the flag out to serve node ports on every address")
        }
        // A loopback CIDR is named and left out, as kube-proxy with localhost node ports off
        // leaves it (its TestNodePorts: 192.168.0.0/24,127.0.0.1/32 serves 192.168.0.0/24 only);
        // a list of nothing else would serve nowhere, and is refused.
        let loopback = nodePortAddresses.filter { IPPrefix($0)?.address.isLoopback == true }
        if !loopback.isEmpty {
            guard loopback.count < nodePortAddresses.count else {
                throw ValidationError(
                    "--nodeport-addresses \(loopback.joined(separator: ",")): node ports are never served on loopback addresses "
                        + "(127.0.0.0/8, ::1); name a CIDR of the node's own addresses, or leave the flag out for all of them")
            }
            FileHandle.standardError.write(
                "svcnat: --nodeport-addresses \(loopback.joined(separator: ",")) left out: svcnat never serves node ports on "
                    + "loopback addresses\n")
            nodePortAddresses.removeAll { loopback.contains($0) }
        }
        for c in serviceCIDR where IPPrefix(c) == nil {
            throw ValidationError("--service-cidr \"\(c)\" is not a CIDR")
        }
        guard Self.portRange(serviceNodePortRange) != nil else {
            throw ValidationError("--service-node-port-range \"\(serviceNodePortRange)\" is not FIRST-LAST, such as 30000-32767")
        }
        if allocate {
            if serviceCIDR.isEmpty { throw ValidationError("--allocate needs --service-cidr: the range to allocate cluster IPs from") }
            for c in serviceCIDR.compactMap({ IPPrefix($0) }) where Allocation.usable(c).count == 0 {
                throw ValidationError("--service-cidr \(c) is too small to allocate from")
            }
        }
    }

    static func portRange(_ s: String) -> ClosedRange<UInt16>? {
        let parts = s.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = UInt16(parts[0]), let b = UInt16(parts[1]), a >= 1, a <= b else { return nil }
        return a...b
    }

    /// The allocation to make (`--allocate`), or nil.
    var allocation: Allocation.Settings? {
        guard allocate, let range = Self.portRange(serviceNodePortRange) else { return nil }
        return Allocation.Settings(serviceCIDRs: serviceCIDR.compactMap { IPPrefix($0) }, nodePorts: range)
    }

    static func tableNameProblem(_ s: String) -> String? {
        if s.isEmpty || s.utf8.count > 255 { return "must be 1 to 255 bytes" }
        guard let f = s.first, f.isASCII, f.isLetter,
            s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-".contains($0)) })
        else {
            return "must start with a letter and hold only letters, digits, '_' and '-'"
        }
        return nil
    }

    var config: ProxyConfig {
        var c = ProxyConfig(
            table: table, clusterCIDRs: clusterCIDR.compactMap { IPPrefix($0) }, masqueradeAll: masqueradeAll,
            nodeName: nodeName ?? ProcessInfo.processInfo.hostName, endpointSelection: endpointSelection ?? .map,
            nodePortAddresses: nodePortAddresses.compactMap { IPPrefix($0) }, serviceCIDRs: serviceCIDR.compactMap { IPPrefix($0) })
        c.zone = nodeZone
        // This network namespace's own addresses: the node IPs that decide whether
        // loadBalancerSourceRanges admit a Service's LB IPs as sources (kube-proxy's nodeIP).
        c.nodeIPs = Set(((try? localIPAddresses()) ?? []).filter { !$0.isLoopback })
        return c
    }

    /// The configuration with what was not given taken from the flags the table remembers
    /// (`remembered`), and a sentence for each flag given now that differs from them.
    func config(remembered: AppliedFlags?) -> (ProxyConfig, notes: [String]) {
        var c = config
        guard let r = remembered else { return (c, []) }
        var notes: [String] = []
        func take<T: Equatable>(given: Bool, _ now: WritableKeyPath<ProxyConfig, T>, _ then: T, _ text: (T) -> String) {
            if !given {
                c[keyPath: now] = then
            } else if c[keyPath: now] != then {
                notes.append("the table was applied with \(text(then)); this uses \(text(c[keyPath: now])) as given")
            }
        }
        func cidrs(_ flag: String) -> ([IPPrefix]) -> String {
            { $0.isEmpty ? "no \(flag)" : $0.map { "\(flag) \($0)" }.joined(separator: " ") }
        }
        take(given: !clusterCIDR.isEmpty, \.clusterCIDRs, r.clusterCIDRs, cidrs("--cluster-cidr"))
        take(
            given: !nodePortAddresses.isEmpty, \.nodePortAddresses, r.nodePortAddresses, cidrs("--nodeport-addresses")
        )
        take(given: !serviceCIDR.isEmpty, \.serviceCIDRs, r.serviceCIDRs, cidrs("--service-cidr"))
        take(given: masqueradeAll, \.masqueradeAll, r.masqueradeAll) { $0 ? "--masquerade-all" : "no --masquerade-all" }
        take(given: endpointSelection != nil, \.endpointSelection, r.endpointSelection) {
            "--endpoint-selection \($0.rawValue)"
        }
        return (c, notes)
    }
}

extension EndpointSelection: ExpressibleByArgument {}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case nft, iptables, ip6tables, json
}

/// What show and explain print: the kernel's view, in nft or JSON.
enum ViewFormat: String, ExpressibleByArgument, CaseIterable {
    case nft, json
}

/// The rule flags, taken but not listed by the subcommands that read the kernel's tables
/// as they are (show, explain, cleanup): DESIGN.md's contract gives every subcommand the
/// common flags, so scripts that pass them keep working, while `--help` lists only what acts.
struct UnlistedRuleFlags: ParsableArguments {
    @Option(help: .hidden) var nodeName: String?
    @Option(help: .hidden) var nodeZone: String?
    @Option(name: .customLong("cluster-cidr"), help: .hidden) var clusterCIDR: [String] = []
    @Option(name: .customLong("nodeport-addresses"), help: .hidden) var nodePortAddresses: [String] = []
    @Option(name: .customLong("service-cidr"), help: .hidden) var serviceCIDR: [String] = []
    @Flag(help: .hidden) var masqueradeAll = false
    @Option(help: .hidden) var endpointSelection: EndpointSelection?
    @Flag(name: [.short, .long], help: .hidden) var verbose = false
}
