import Glibc

/// Watches a folder tree with inotify and reports the paths that changed. This file and the
/// netlink code are the kernel-facing layer: the only places that read raw kernel structures.
public final class DirectoryWatcher: @unchecked Sendable {
    private let fd: Int32
    private var watches: [Int32: String] = [:]
    private let lock = PthreadMutex()
    private var stopped = false
    private var thread: pthread_t?
    private let onChange: @Sendable (Change) -> Void
    private let root: String
    /// The watch on the root's parent folder, which sees the root itself replaced.
    private var parentWatch: Int32 = -1
    private let rootName: String

    public enum Change: Sendable {
        /// These paths changed: files written, moved in or out, deleted, folders created.
        case paths([String])
        /// Events were lost or the root folder was replaced: read everything again.
        case everything(reason: String)
    }

    static let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_DELETE_SELF)
    static let parentMask = UInt32(IN_MOVED_TO | IN_CREATE | IN_ONLYDIR)

    /// Starts watching `root` and every folder below it, and `root`'s parent for the root being
    /// replaced (a folder renamed over it); `onChange` is called from a background thread.
    public init(root: String, onChange: @escaping @Sendable (Change) -> Void) throws {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw HostError("inotify_init1", errno: errno) }
        self.onChange = onChange
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        let slash = r.lastIndex(of: "/")
        rootName = slash.map { String(r[r.index(after: $0)...]) } ?? r
        let parent = slash.map { $0 == r.startIndex ? "/" : String(r[..<$0]) } ?? "."
        try addTree(r)
        // Best effort: a root without a readable parent is still watched itself.
        parentWatch = inotify_add_watch(fd, parent, Self.parentMask)
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        pthread_create(
            &t, nil,
            { arg in
                let w = Unmanaged<DirectoryWatcher>.fromOpaque(arg!).takeRetainedValue()
                w.loop()
                return nil
            }, box.toOpaque())
        thread = t
    }

    public func stop() {
        lock.locked { stopped = true }
        if let t = thread { pthread_join(t, nil); thread = nil }
    }

    deinit { close(fd) }

    /// Watches `dir` and its subfolders.
    func addTree(_ dir: String) throws {
        let wd = inotify_add_watch(fd, dir, Self.mask)
        guard wd >= 0 else { throw HostError("inotify_add_watch \(dir)", errno: errno) }
        lock.locked { watches[wd] = dir }
        guard let d = opendir(dir) else { return }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name == "." || name == ".." { continue }
            if e.pointee.d_type == UInt8(DT_DIR) { try? addTree(dir + "/" + name) }
        }
    }

    private func loop() {
        let size = 64 * 1024
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while !lock.locked({ stopped }) {
            guard poll(&pfd, 1, 200) > 0 else { continue }
            let n = read(fd, buf, size)
            guard n > 0 else { continue }
            var paths: [String] = []
            var rescan: String?
            var at = 0
            while at + MemoryLayout<inotify_event>.size <= n {
                let ev = (buf + at).assumingMemoryBound(to: inotify_event.self).pointee
                let nameStart = buf + at + MemoryLayout<inotify_event>.size
                let name = ev.len > 0 ? String(cString: nameStart.assumingMemoryBound(to: CChar.self)) : ""
                at += MemoryLayout<inotify_event>.size + Int(ev.len)
                if ev.mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    rescan = "the inotify queue overflowed (events were lost)"
                    continue
                }
                if ev.wd == parentWatch {
                    if name == rootName {
                        // The root is a new folder now: watch it, and read it all.
                        try? addTree(root)
                        rescan = "the folder \(root) was replaced"
                    }
                    continue
                }
                if ev.mask & UInt32(IN_IGNORED) != 0 {
                    lock.locked { _ = watches.removeValue(forKey: ev.wd) }
                    continue
                }
                if let dir = lock.locked({ watches[ev.wd] }) {
                    let path = name.isEmpty ? dir : dir + "/" + name
                    if ev.mask & UInt32(IN_ISDIR) != 0 && ev.mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 {
                        try? addTree(path)
                    }
                    paths.append(path)
                }
            }
            if let rescan {
                onChange(.everything(reason: rescan))
            } else if !paths.isEmpty {
                onChange(.paths(paths))
            }
        }
    }
}

/// A pthread mutex, so this module needs no Foundation.
final class PthreadMutex: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    func locked<T>(_ f: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return try f()
    }
}
