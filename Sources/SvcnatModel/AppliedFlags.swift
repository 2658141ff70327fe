import NFTModel

/// The flags that shape the rules, remembered in each of svcnat's tables: chain `applied-flags`, which
/// nothing jumps to, holds one rule per flag whose comment is the flag as it is written on the
/// command line (`return comment "--cluster-cidr 198.19.0.0/16"`). `diff`, `show` and
/// `explain` read them back, so the table says how it was applied.
public struct AppliedFlags: Hashable, Sendable {
    public var clusterCIDRs: [IPPrefix] = []
    public var nodePortAddresses: [IPPrefix] = []
    public var serviceCIDRs: [IPPrefix] = []
    public var masqueradeAll = false
    public var endpointSelection: EndpointSelection = .map

    public init() {}

    public init(_ c: TranslatorConfig) {
        clusterCIDRs = c.clusterCIDRs
        nodePortAddresses = c.nodePortAddresses
        serviceCIDRs = c.serviceCIDRs
        masqueradeAll = c.masqueradeAll
        endpointSelection = c.endpointSelection
    }

    /// The flags, one per word, as the command line writes them; all of both families, so
    /// either table tells the whole.
    public var words: [String] {
        clusterCIDRs.map { "--cluster-cidr \($0)" } + nodePortAddresses.map { "--nodeport-addresses \($0)" }
            + serviceCIDRs.map { "--service-cidr \($0)" } + (masqueradeAll ? ["--masquerade-all"] : [])
            + ["--endpoint-selection \(endpointSelection.rawValue)"]
    }

    /// The flags read back from words; nil when one is not a flag svcnat writes there.
    public init?(words: [String]) {
        for w in words {
            let parts = w.split(separator: " ")
            switch (parts.first, parts.count) {
            case ("--masquerade-all", 1): masqueradeAll = true
            case ("--endpoint-selection", 2):
                guard let e = EndpointSelection(rawValue: String(parts[1])) else { return nil }
                endpointSelection = e
            case ("--cluster-cidr", 2), ("--nodeport-addresses", 2), ("--service-cidr", 2):
                guard let p = IPPrefix(parts[1]) else { return nil }
                switch parts[0] {
                case "--cluster-cidr": clusterCIDRs.append(p)
                case "--nodeport-addresses": nodePortAddresses.append(p)
                default: serviceCIDRs.append(p)
                }
            default: return nil
            }
        }
    }

    /// What a table read from the kernel remembers; nil when it has no `applied-flags` chain (made by
    /// an older svcnat) or the chain is not as svcnat writes it.
    public init?(_ ruleset: Ruleset) {
        guard let chain = ruleset.chain(Names.flags) else { return nil }
        let words = chain.rules.compactMap(\.comment)
        guard words.count == chain.rules.count else { return nil }
        self.init(words: words)
    }

    /// The chain that holds them.
    public var chain: Chain {
        Chain(name: Names.flags, rules: words.map { Rule([.verdict(.return)], comment: $0) })
    }
}
