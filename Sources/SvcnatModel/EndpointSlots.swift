import NFTModel

/// Places Service ports' endpoints in the shared endpoint maps. A Service port's chain name picks
/// its map (FNV-1a hash over 256 maps, so each map is bound by few rules: the kernel's set
/// binding cost grows with the rules per set); within the map it owns the keys
/// [base, base + capacity), capacity being n rounded up to a power of two, aligned to it.
/// A port keeps its place while its endpoints still fit, so changing one Service moves no other.
public struct EndpointSlot: Hashable, Sendable {
    public var shard: Int
    public var base: UInt32
    public var capacity: UInt32
}

public enum EndpointSlots {
    public static func capacity(_ n: UInt32) -> UInt32 {
        var c: UInt32 = 1
        while c < n { c <<= 1 }
        return c
    }

    public static func shard(_ chain: String) -> Int {
        var h: UInt32 = 2166136261
        for b in chain.utf8 { h = (h ^ UInt32(b)) &* 16777619 }
        return Int(h % UInt32(Names.endpointShards))
    }

    /// Slots found in a ruleset: each service chain's `dnat ... offset base map @endpoints-K`,
    /// sized by the endpoints the map holds from `base` up to the next slot (the rule's modulus
    /// may cover only this node's endpoints).
    public static func read(_ r: Ruleset) -> [String: EndpointSlot] {
        var found: [(chain: String, shard: Int, map: String, base: UInt32)] = []
        // A port's slot is used by its service chain, its external chain, or both.
        for c in r.chains where c.name.hasPrefix(Names.serviceChainPrefix) || c.name.hasPrefix("ext-") {
            let key = c.name.hasPrefix("ext-") ? Names.serviceChainPrefix + c.name.dropFirst(4) : c.name
            for rule in c.rules {
                for case .dnatFromMap(_, let base, let map, _) in rule.items {
                    guard map.hasPrefix(Names.endpointMapPrefix), let shard = Int(map.dropFirst(Names.endpointMapPrefix.count)) else {
                        continue
                    }
                    found.append((key, shard, map, base))
                }
            }
        }
        var basesByMap: [String: Set<UInt32>] = [:]
        for f in found { basesByMap[f.map, default: []].insert(f.base) }
        var keysByMap: [String: Set<UInt32>] = [:]
        var out: [String: EndpointSlot] = [:]
        for f in found {
            if keysByMap[f.map] == nil {
                keysByMap[f.map] = Set(
                    (r.set(f.map)?.elements ?? []).compactMap { if case .integer(let k)? = $0.key.first { k } else { nil } })
            }
            var n: UInt32 = 1
            while keysByMap[f.map]!.contains(f.base + n) && !basesByMap[f.map]!.contains(f.base + n) { n += 1 }
            out[f.chain] = EndpointSlot(shard: f.shard, base: f.base, capacity: capacity(n))
        }
        return out
    }

    /// Keeps each previous slot that still fits (same shard, enough room), then gives the others
    /// the lowest free aligned range of their shard, never one a previous slot held.
    /// Deterministic for the same inputs.
    public static func allocate(_ ports: [(chain: String, endpoints: UInt32)], previous: [String: EndpointSlot]) -> [String: EndpointSlot] {
        var result: [String: EndpointSlot] = [:]
        var used: [Int: [(UInt32, UInt32)]] = [:]  // shard -> [(start, end)]
        var pending: [(String, UInt32)] = []
        for (chain, n) in ports {
            if let p = previous[chain], p.shard == shard(chain), n <= p.capacity {
                result[chain] = p
            } else {
                pending.append((chain, n))
            }
        }
        // A range given up now (its port moved or went) is not handed out again in the same
        // transaction: a packet still running the old rules may read it until the commit ends.
        for p in previous.values { used[p.shard, default: []].append((p.base, p.base + p.capacity)) }
        for k in used.keys { used[k]!.sort { $0.0 < $1.0 } }
        for (chain, n) in pending.sorted(by: { $0.0 < $1.0 }) {
            let s = shard(chain), cap = capacity(n)
            var ranges = used[s] ?? []
            var base: UInt32 = 0
            for (start, end) in ranges {
                if base + cap <= start { break }
                if end > base { base = (end + cap - 1) / cap * cap }
            }
            result[chain] = EndpointSlot(shard: s, base: base, capacity: cap)
            let at = ranges.firstIndex { $0.0 > base } ?? ranges.count
            ranges.insert((base, base + cap), at: at)
            used[s] = ranges
        }
        return result
    }
}
