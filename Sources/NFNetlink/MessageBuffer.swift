import CNftables
import Glibc

/// A growing buffer of netlink messages laid end to end, as one batch datagram.
final class MessageBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    private(set) var length = 0
    /// Room left free for the next message; no message svcnat builds comes near it (element
    /// lists are split long before).
    static let headroom = 256 * 1024

    init(capacity: Int = 1 << 20) {
        self.capacity = max(capacity, Self.headroom * 2)
        base = malloc(self.capacity)!
    }

    deinit { free(base) }

    /// The place where the next message goes, with at least `headroom` bytes free.
    var tail: UnsafeMutablePointer<CChar> {
        if capacity - length < Self.headroom {
            // realloc, not a new buffer and a copy: a buffer this large is mapped pages, which
            // the kernel moves (mremap) rather than copies, so the batch is not held twice
            // while it grows (16 + 8 MB at its peak for 10,000 Services, not 16).
            guard let bigger = realloc(base, capacity * 2) else { fatalError("no memory for a \(capacity * 2)-byte netlink batch") }
            base = bigger
            capacity *= 2
        }
        return (base + length).assumingMemoryBound(to: CChar.self)
    }

    /// Counts the message just built at `tail`.
    func commit(_ nlh: UnsafeMutablePointer<nlmsghdr>) {
        length += (Int(nlh.pointee.nlmsg_len) + 3) & ~3
        precondition(length <= capacity, "netlink message overran its buffer")
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: length) }
}
