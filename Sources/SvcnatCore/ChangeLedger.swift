import NFNetlink
import NFTModel

/// What svcnat knows of the commits made to this namespace's ruleset, read off the kernel's
/// change events: the generation up to which every commit is accounted for, and the commits by
/// others that touched svcnat's tables since the last report. Plain values, so the rules below
/// are unit-tested without a kernel.
///
/// - A commit's change messages come before its commit message, and commits are numbered one
///   after another; so a commit message whose number skips one means events were missed.
/// - Changes stamped with svcnat's own port id, and changes to other tables or families,
///   touch nothing svcnat holds.
/// - svcnat's own batches are sent with a compare-and-swap on the generation, so when one
///   commits svcnat knows the generation it made (`own`) without its events.
struct ChangeLedger {
    let table: String
    let ownPort: UInt32
    /// Every commit up to this generation is accounted for; nil before the first report.
    private(set) var accounted: UInt32?
    /// Change messages to svcnat's tables by others, whose commit message has not come yet.
    private var pendingTouch = false
    private var touchedBy: [String] = []
    private var lost: String?

    init(table: String, ownPort: UInt32) {
        self.table = table
        self.ownPort = ownPort
    }

    /// The generation after `g`: the kernel skips 0 when it wraps.
    static func next(_ g: UInt32) -> UInt32 { g == UInt32.max ? 1 : g + 1 }

    /// Whether `g` is at or before `accounted`, in wrapping order.
    func hasSeen(_ g: UInt32) -> Bool {
        guard let a = accounted else { return false }
        return Int32(bitPattern: g &- a) <= 0
    }

    mutating func take(_ events: [ChangeEvent], lost dropped: Bool = false) {
        if dropped { lose("the kernel dropped change events (the event socket's receive buffer was full)") }
        for e in events {
            switch e {
            case .change(_, let family, let table, let port):
                if family != nil, table == self.table, port != ownPort { pendingTouch = true }
            case .commit(let g, _, let process):
                defer { pendingTouch = false }
                guard let a = accounted else { continue }
                if g == Self.next(a) {
                    accounted = g
                } else if !hasSeen(g) {
                    lose("change events of generations \(Self.next(a))...\(g &- 1) were missed")
                    accounted = g
                }
                if pendingTouch { touchedBy.append(process) }
            }
        }
    }

    /// svcnat's own batches committed, one generation each, starting after `from`.
    mutating func own(commits: Int, from: UInt32) {
        guard commits > 0 else { return }
        guard accounted == from else {
            lose("svcnat committed at a generation its events had not reached")
            return
        }
        var g = from
        for _ in 0..<commits { g = Self.next(g) }
        accounted = g
    }

    mutating func lose(_ why: String) {
        if lost == nil { lost = why }
    }

    /// Why svcnat's view of its tables may no longer be the kernel's, once the events are read
    /// up to `generation`: another writer changed them, or events went missing. Nil when every
    /// commit since the last report was svcnat's own or left its tables alone. Starts the next
    /// report from `generation`.
    mutating func report(at generation: UInt32) -> String? {
        defer {
            accounted = generation
            touchedBy = []
            lost = nil
        }
        if let lost { return lost }
        guard !touchedBy.isEmpty else { return nil }
        let who = Array(Set(touchedBy)).sorted()
        return "\(who.joined(separator: ", ")) changed table \(table)"
            + (touchedBy.count > 1 ? " (\(touchedBy.count) commits)" : "")
    }
}
