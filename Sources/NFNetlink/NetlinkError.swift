import CNftables
import Glibc
import NFTModel

/// A failure talking to the kernel: the operation it was about and the errno. For a batch,
/// `refused` is the change the kernel refused (matched by sequence number), as a value; the
/// hints below read it, not the text.
public struct NetlinkError: Error, CustomStringConvertible, Sendable {
    /// What svcnat was doing, in words: a socket call, a dump, or the refused change in nft syntax.
    public var operation: String
    public var errno: Int32
    /// The refused change of a batch, with its table.
    public var refused: (family: TableFamily, table: String, change: Operation)?
    /// What the kernel said of the refusal, when it said more than the errno (extended ack).
    public var kernelMessage: String?

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public init(refused change: Operation, in tx: Transaction, errno: Int32) {
        self.init(Self.describe(change, in: tx), errno: errno)
        refused = (tx.family, tx.table, change)
    }

    public var errnoName: String { String(cString: strerror(errno)) }

    /// A kernel feature the refused change needs, which some kernels lack.
    public enum Feature: Sendable { case fib, numgen, dynamicSets }

    public var missingFeature: Feature? {
        guard errno == EOPNOTSUPP || errno == ENOENT, let change = refused?.change else { return nil }
        switch change {
        case .addSet(let set) where set.isDynamic: return .dynamicSets
        case .addRule(_, let rule):
            for e in rule.exprs {
                switch e {
                case .fibDaddrType, .fibSaddrType: return .fib
                case .numgen: return .numgen
                case .dynsetUpdate: return .dynamicSets
                default: continue
                }
            }
            return nil
        default: return nil
        }
    }

    public var description: String {
        var s = "\(operation): \(errnoName) (errno \(errno))"
        if let m = kernelMessage, !m.isEmpty { s += " (kernel: \(m))" }
        if errno == EPERM { s += "; svcnat needs CAP_NET_ADMIN (run it as root, or give it that capability alone)" }
        // Kernel features some kernels lack, and what svcnat can do without them.
        switch missingFeature {
        case .fib?:
            s +=
                "; this kernel may lack the nftables fib expression (nft_fib_ipv4): give --nodeport-addresses CIDRs so node ports "
                + "need no fib (externalTrafficPolicy Local still needs it)"
        case .numgen?: s += "; this kernel may lack the nftables numgen expression (nft_numgen)"
        case .dynamicSets?: s += "; this kernel may lack dynamic sets with timeouts (session affinity needs them)"
        case nil: break
        }
        return s
    }

    /// One change in nft syntax; for a run of elements, the first and a count of the rest.
    static func describe(_ change: Operation, in tx: Transaction) -> String {
        var one = Transaction(family: tx.family, table: tx.table, operations: [change])
        if case .addElements(let s, let e) = change, e.count > 1 {
            one.operations = [.addElements(set: s, [e[0]])]
            return one.nftText.trimmingNewline + " (and \(e.count - 1) more elements in this batch)"
        }
        return one.nftText.split(separator: "\n").first.map(String.init) ?? "batch"
    }

    /// Runs a libc/libmnl call that returns -1 with errno on failure.
    @discardableResult
    static func check(_ operation: @autoclosure () -> String, _ result: Int) throws -> Int {
        if result < 0 { throw NetlinkError(operation(), errno: Glibc.errno) }
        return result
    }
}

/// Several refused messages of one batch; the first is the one to report.
public struct BatchError: Error, CustomStringConvertible, Sendable {
    public var failures: [NetlinkError]
    /// Which batch of the change was refused (1-based) and how many there were: the second
    /// batch only removes map entries no rule reaches, and the first is committed by then.
    public var batch = 1
    public var batches = 1
    public init(failures: [NetlinkError]) { self.failures = failures }

    /// The error text stays short however many messages were refused: the first ones in full,
    /// then how many more.
    static let shownFailures = 8
    static let maxText = 4096

    public var description: String {
        var s =
            batch == 1
            ? "the kernel refused the transaction (nothing was changed): "
            : "the kernel refused batch \(batch) of \(batches) (the removal of map entries no rule reaches; "
                + "the batches before it were committed, so the rules in force are the new ones): "
        var shown = 0
        for f in failures.prefix(Self.shownFailures) {
            let text = f.description
            guard s.utf8.count + text.utf8.count <= Self.maxText || shown == 0 else { break }
            s += (shown == 0 ? "" : "; ") + (text.utf8.count > Self.maxText ? String(text.prefix(Self.maxText)) + "..." : text)
            shown += 1
        }
        if failures.count > shown { s += "; and \(failures.count - shown) more refused messages" }
        return s
    }
}
