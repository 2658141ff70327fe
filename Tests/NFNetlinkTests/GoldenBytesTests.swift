import CNftables
import Foundation
import Glibc
@testable import NFNetlink
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatSources
import Testing

let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../examples").standardized.path

/// One nftables message: its type (subsystem << 8 | message) and everything after the netlink
/// header (nfgenmsg, then the attributes, padding included).
struct Message: Hashable, CustomStringConvertible {
    var type: UInt16
    var payload: [UInt8]
    var description: String {
        "type \(type & 0xff): " + payload.map { String(format: "%02x", $0) }.joined(separator: " ")
    }
}

/// Reads the messages of the batches in `nft --debug=mnl` output (libmnl's
/// `mnl_nlmsg_fprintf` layout: a header block, the extra header, then one line per attribute
/// header and one per four bytes of data). Messages outside BATCH_BEGIN/END (nft's own
/// generation query and the kernel's answers) are left out. The message flags are not
/// compared: the dump prints only four of them.
func mnlBatches(_ text: String) -> [Message] {
    var out: [Message] = []
    var current: Message?
    var inBatch = false
    func bytes(_ cell: Substring) -> [UInt8] { cell.split(separator: " ").compactMap { UInt8($0, radix: 16) } }
    for line in text.split(separator: "\n") {
        let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard cells.count >= 4 else { continue }
        if line.contains("|  type | flags  |"), let t = UInt16(cells[1]) {
            if let m = current, inBatch { out.append(m) }
            current = Message(type: t, payload: [])
            if t == UInt16(NFNL_MSG_BATCH_BEGIN) { inBatch = true }
            if t == UInt16(NFNL_MSG_BATCH_END) { inBatch = false; current = nil }
        } else if line.contains("|  extra header  |") || line.contains("|      data      |") {
            current?.payload += bytes(Substring(cells[1]))
        } else if line.contains("|len |flags| type|"), let len = UInt16(cells[1]), var type = UInt16(cells[3]) {
            if cells[2].contains("N") { type |= 0x8000 }
            if cells[2].contains("B") { type |= 0x4000 }
            current?.payload += [UInt8(len & 0xff), UInt8(len >> 8), UInt8(type & 0xff), UInt8(type >> 8)]
        }
    }
    return out.filter { $0.type != UInt16(NFNL_MSG_BATCH_BEGIN) }
}

/// The object messages of the batch svcnat sends for `txs`.
func svcnatBatch(_ txs: [Transaction]) -> [Message] {
    var enc = BatchEncoder(firstSeq: 1)
    var index = 0
    for tx in txs {
        enc.table = tx.table
        enc.family = KernelNumbers.family(tx.family)
        for op in tx.operations { enc.encode(op, index: index); index += 1 }
    }
    enc.end()
    var out: [Message] = []
    let b = enc.buffer.bytes
    var at = 0
    while at + 16 <= b.count {
        let len = Int(b.loadUnaligned(fromByteOffset: at, as: UInt32.self))
        let type = b.loadUnaligned(fromByteOffset: at + 4, as: UInt16.self)
        let padded = (len + 3) & ~3
        out.append(Message(type: type, payload: Array(b[(at + 16)..<(at + padded)])))
        at += padded
    }
    return out.filter { $0.type != UInt16(NFNL_MSG_BATCH_BEGIN) && $0.type != UInt16(NFNL_MSG_BATCH_END) }
}

/// An attribute tree: what the kernel parses. Attributes of one nest are read by type, so their
/// order does not matter and is put in order of type; a list (a nest whose children share one
/// type, as expressions and elements do) keeps its order.
indirect enum Attr: Hashable, Comparable, CustomStringConvertible {
    case value(type: UInt16, [UInt8])
    case nest(type: UInt16, [Attr])

    var type: UInt16 {
        switch self {
        case .value(let t, _), .nest(let t, _): t
        }
    }
    static func < (a: Attr, b: Attr) -> Bool { a.type < b.type || (a.type == b.type && a.description < b.description) }
    var description: String {
        switch self {
        case .value(let t, let v): "\(t)=" + v.map { String(format: "%02x", $0) }.joined()
        case .nest(let t, let c): "\(t){" + c.map(\.description).joined(separator: ",") + "}"
        }
    }

    static func parse(_ bytes: ArraySlice<UInt8>) -> [Attr] {
        var out: [Attr] = []
        var at = bytes.startIndex
        while at + 4 <= bytes.endIndex {
            let len = Int(bytes[at]) | Int(bytes[at + 1]) << 8
            let raw = UInt16(bytes[at + 2]) | UInt16(bytes[at + 3]) << 8
            guard len >= 4, at + len <= bytes.endIndex else { break }
            let body = bytes[(at + 4)..<(at + len)]
            out.append(raw & 0x8000 != 0 ? .nest(type: raw & 0x3fff, canonical(parse(body))) : .value(type: raw & 0x3fff, Array(body)))
            at += (len + 3) & ~3
        }
        return out
    }

    static func canonical(_ children: [Attr]) -> [Attr] {
        let isList = children.count > 1 && Set(children.map(\.type)).count == 1
        return isList ? children : children.sorted()
    }
}

/// A message as the kernel reads it, after the stated normalisation. The only differences
/// allowed between nft's bytes and svcnat's:
/// - the transaction-local set id (NFTA_SET_ID on NEWSET, NFTA_SET_ELEM_LIST_SET_ID on
///   NEWSETELEM) is a counter of each sender's own;
/// - nft keeps user data (key byte order, typeof) for every set; svcnat writes it only for the
///   endpoint maps, where `nft list` needs it to print `typeof`, and that is compared;
/// - in rules, a lookup's NFTA_LOOKUP_SET_ID (the same transaction-local id), and a bitwise's
///   NFTA_BITWISE_OP when it is 0 (mask-and-xor, the kernel's default: nft states it in some
///   rules and not in others).
/// Everything else, rules' expressions and set elements included, must be equal to the byte.
struct Canonical: Hashable, CustomStringConvertible {
    var type: UInt8
    var family: UInt8
    var attrs: [Attr]
    init(_ m: Message) {
        type = UInt8(m.type & 0xff)
        family = m.payload.first ?? 0
        var dropped: Set<UInt16> = []
        switch Int32(type) {
        case Int32(NFT_MSG_NEWSET.rawValue):
            dropped = [UInt16(NFTA_SET_ID.rawValue)]
            if !String(decoding: m.payload, as: UTF8.self).contains("endpoints-") { dropped.insert(UInt16(NFTA_SET_USERDATA.rawValue)) }
        case Int32(NFT_MSG_NEWSETELEM.rawValue): dropped = [UInt16(NFTA_SET_ELEM_LIST_SET_ID.rawValue)]
        default: break
        }
        attrs = Attr.parse(m.payload[4...]).filter { !dropped.contains($0.type) }.map(Self.withoutDefaults).sorted()
    }

    /// A rule's expression list with the per-expression differences above taken out.
    static func withoutDefaults(_ a: Attr) -> Attr {
        guard case .nest(let t, let exprs) = a, t == UInt16(NFTA_RULE_EXPRESSIONS.rawValue) else { return a }
        return .nest(
            type: t,
            exprs.map { e in
                guard case .nest(let et, let parts) = e, case .value(_, let nameBytes)? = parts.first(where: { $0.type == 1 }) else {
                    return e
                }
                let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                return .nest(
                    type: et,
                    parts.map { part in
                        guard case .nest(let dt, let data) = part, dt == UInt16(NFTA_EXPR_DATA.rawValue) else { return part }
                        return .nest(
                            type: dt,
                            data.filter { d in
                                switch (name, d) {
                                case ("lookup", .value(let k, _)): k != UInt16(NFTA_LOOKUP_SET_ID.rawValue)
                                case ("bitwise", .value(let k, let v)): !(k == UInt16(NFTA_BITWISE_OP.rawValue) && v.allSatisfy { $0 == 0 })
                                default: true
                                }
                            })
                    })
            })
    }
    var description: String { "msg \(type) family \(family): " + attrs.map(\.description).joined(separator: " ") }
}

@Suite struct GoldenNetlinkBytes {
    /// The example's table, created by svcnat and by `nft -f` of svcnat's own dry run: the
    /// same messages, byte for byte after the normalisation above. nft's bytes were captured
    /// with `scripts/capture-golden` (nft 1.0.6, libnftnl 1.2.4) into Fixtures/example.mnl.
    @Test func creatingTheExampleTableSendsWhatNftSends() throws {
        let nft = mnlBatches(try String(contentsOfFile: fixtures + "/example.mnl", encoding: .utf8))
        #expect(nft.count > 40, "the capture holds the whole table")
        let state = try ManifestSource.load([examples]).state
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], nodeName: "node-a")
        let tables = try Reconciler.desiredTables(state, config: config)
        let ours = svcnatBatch(tables.map { Planner.plan(from: nil, to: $0.ruleset) })
        // The order differs (nft sends objects in the order of its file), the content may not.
        let a = ours.map(Canonical.init), b = nft.map(Canonical.init)
        let missing = Set(b).subtracting(a), extra = Set(a).subtracting(b)
        #expect(
            missing.isEmpty && extra.isEmpty,
            """
            nft sends, svcnat does not:
            \(missing.map(\.description).sorted().joined(separator: "\n"))
            svcnat sends, nft does not:
            \(extra.map(\.description).sorted().joined(separator: "\n"))
            """
        )
        #expect(a.count == b.count)
    }
}
