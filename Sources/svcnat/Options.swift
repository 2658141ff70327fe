import ArgumentParser
import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel

/// Flags every subcommand shares; names follow kube-proxy where it has them.
struct CommonOptions: ParsableArguments {
    @Option(help: "The nftables table svcnat owns (family ip).")
    var table = "svcnat"

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
                "How a Service chain picks an endpoint: map (one rule, endpoints as elements of shared maps) or cascade (one rule per "
                    + "endpoint, probability 1/(n-i)).")
    )
    var endpointSelection: EndpointSelection = .map

    @Flag(name: [.short, .long], help: "Print the transaction sent to the kernel.")
    var verbose = false

    func validate() throws {
        if let why = Self.tableNameProblem(table) { throw ValidationError("--table \"\(table)\": \(why)") }
        for c in clusterCIDR where IPPrefix(c) == nil {
            throw ValidationError("--cluster-cidr \"\(c)\" is not a CIDR such as 198.19.0.0/16 or 2001:db8:1::/48")
        }
        for c in nodePortAddresses where IPPrefix(c) == nil {
            throw ValidationError("--nodeport-addresses \"\(c)\" is not a CIDR")
        }
        for c in nodePortAddresses where IPPrefix(c).map({ $0.address.isLoopback || $0.length == 0 }) == true {
            throw ValidationError("--nodeport-addresses \"\(c)\": node ports are never served on loopback addresses (127.0.0.0/8, ::1)")
        }
        for c in serviceCIDR where IPPrefix(c) == nil {
            throw ValidationError("--service-cidr \"\(c)\" is not a CIDR")
        }
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
            nodeName: nodeName ?? ProcessInfo.processInfo.hostName, endpointSelection: endpointSelection,
            nodePortAddresses: nodePortAddresses.compactMap { IPPrefix($0) }, serviceCIDRs: serviceCIDR.compactMap { IPPrefix($0) })
        c.zone = nodeZone
        return c
    }
}

extension EndpointSelection: ExpressibleByArgument {}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case nft, iptables, ip6tables, json
}
