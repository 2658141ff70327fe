/// A set element's key, or a data map element's value: its fields in order.
///
/// Most keys svcnat writes are IPv4 fields that fit in 64 bits together (an address, an
/// address pair, an address . protocol . port, a slot number). Those are held in one word with
/// a note of their fields' kinds, so an element costs no allocation of its own: at 10,000
/// Services x 10 endpoints that was some 300,000 small arrays kept for partial syncs. Any other
/// key (IPv6) is held as an array. Each key has one form, so equality and hashing are those of
/// the stored form.
public struct ElementKey: Hashable, Sendable, RandomAccessCollection, ExpressibleByArrayLiteral, CustomStringConvertible {
    private enum Storage: Hashable, Sendable {
        /// The fields big-endian in order, the last in the lowest bits; `shape` holds the count
        /// in its low 3 bits and each field's kind in 2 bits above them, the first field lowest.
        case packed(UInt64, shape: UInt16)
        case fields([KeyValue])
    }
    private let storage: Storage

    private static let maxPacked = 6

    public init(_ fields: [KeyValue]) {
        storage = Self.pack(fields).map { .packed($0.0, shape: $0.1) } ?? .fields(fields)
    }

    public init(arrayLiteral fields: KeyValue...) { self.init(fields) }

    private static func kind(_ v: KeyValue) -> (kind: UInt16, bits: Int, value: UInt64)? {
        switch v {
        case .ip(let a): a.family == .v4 ? (0, 32, UInt64(a.v4Value)) : nil
        case .proto(let p): (1, 8, UInt64(p.number))
        case .port(let p): (2, 16, UInt64(p))
        case .integer(let n): (3, 32, UInt64(n))
        }
    }

    private static func pack(_ fields: [KeyValue]) -> (UInt64, UInt16)? {
        guard fields.count <= maxPacked else { return nil }
        var v: UInt64 = 0, bits = 0, shape = UInt16(fields.count)
        for (i, f) in fields.enumerated() {
            guard let k = kind(f), bits + k.bits <= 64 else { return nil }
            v = v << UInt64(k.bits) | k.value
            bits += k.bits
            shape |= k.kind << UInt16(3 + 2 * i)
        }
        return (v, shape)
    }

    private static func width(_ kind: UInt16) -> Int { kind == 1 ? 8 : kind == 2 ? 16 : 32 }

    /// The key as one number that orders like the key itself, when it fits in 64 bits (every
    /// IPv4 key svcnat makes).
    public var packed: UInt64? { if case .packed(let v, _) = storage { v } else { nil } }

    /// The packed number with its fields' kinds: two keys of one shape order as their numbers.
    public var packedWithShape: (value: UInt64, shape: UInt16)? {
        if case .packed(let v, let shape) = storage { (v, shape) } else { nil }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int {
        switch storage {
        case .packed(_, let shape): Int(shape & 7)
        case .fields(let f): f.count
        }
    }

    public subscript(i: Int) -> KeyValue {
        switch storage {
        case .fields(let f): return f[i]
        case .packed(let v, let shape):
            precondition(i >= 0 && i < Int(shape & 7), "ElementKey index out of range")
            var below = 0
            for j in (i + 1)..<Int(shape & 7) { below += Self.width(shape >> UInt16(3 + 2 * j) & 3) }
            let kind = shape >> UInt16(3 + 2 * i) & 3
            let bits = Self.width(kind)
            let x = v >> UInt64(below) & ((1 << UInt64(bits)) - 1)
            switch kind {
            case 0: return .ip(IPAddress(UInt32(x)))
            case 1: return .proto(TransportProtocol(number: UInt8(x))!)
            case 2: return .port(UInt16(x))
            default: return .integer(UInt32(x))
            }
        }
    }

    public var fields: [KeyValue] { Array(self) }

    /// Each field in network order, padded to 4 bytes, as the kernel stores a key.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count * 4)
        for v in self {
            let b = v.bytes
            out += b
            out += repeatElement(0, count: (4 - b.count % 4) % 4)
        }
        return out
    }

    public var description: String { map(\.description).joined(separator: " . ") }

    /// Key order, field by field; one comparison of numbers for two packed keys of one shape
    /// (the keys of one set).
    public func precedes(_ other: ElementKey) -> Bool {
        if case .packed(let a, let sa) = storage, case .packed(let b, let sb) = other.storage, sa == sb { return a < b }
        return lexicographicallyPrecedes(other)
    }
}
