import Foundation
import NFTModel
import SvcnatModel

/// Reads manifests from files, folders (recursively: *.yaml, *.yml, *.json) and standard input.
public enum ManifestSource {
    public struct Result: Sendable {
        public var state: ClusterState
        public var warnings: [Warning]
        public var files: [String]
        /// Whether the input held a manifest at all: a manifest file (empty or not), or standard
        /// input with something in it. An empty folder, a folder of other files or empty
        /// standard input hold none, and applying that would remove every Service.
        public var holdsManifests: Bool
        /// Objects not programmed (other kinds, other proxies), for the summary.
        public var skipped: [SkippedObject] = []
        /// The file of each object ("Service ns/name" -> file).
        public var origins: [String: String] = [:]

        /// The input as it is programmed: with `allocation`, addresses and node ports filled in
        /// where the manifests lack them (what Services hold in the kernel now, `held`, is kept);
        /// and what there is to warn about.
        public func prepared(allocation: Allocation.Settings?, keeping held: Allocation.Held = .init()) -> (
            state: ClusterState, allocated: Allocation.Result?, warnings: [Warning]
        ) {
            var state = self.state
            var allocated: Allocation.Result?
            var warnings: [Warning] = []
            if let allocation {
                let result = Allocation.assign(state.services, allocation, keeping: held)
                state.services = result.applied(to: state.services)
                for key in result.given.keys.sorted() {
                    for p in result.given[key]!.problems {
                        warnings.append(
                            Warning(text: "\(origins["Service \(key)"] ?? ""): Service \(key): \(p); the Service gets no rules for it"))
                    }
                }
                allocated = result
            }
            warnings += ManifestReview.warnings(state, origins: origins, allocating: allocation != nil)
            return (state, allocated, warnings)
        }
    }

    /// Loads every path; throws `InputErrors` listing every problem found, or returns the state.
    public static func load(
        _ paths: [String], stdin: () -> String? = { readStandardInput() }, maxInput: Int = maxInputSize
    ) throws -> Result {
        var inputs: [ManifestDecoder.Input] = []
        var errors: [InputError] = []
        var files: [String] = []
        var skipped: [(path: String, why: String)] = []
        var total = 0
        var holdsManifests = false
        var read = Set<FileIdentity>()
        for path in paths {
            if path == "-" {
                files.append("-")
                guard let text = stdin() else {
                    errors.append(InputError(file: "<stdin>", message: "is not UTF-8 text of at most \(maxFileSize >> 20) MB"))
                    continue
                }
                if text.contains(where: { !$0.isWhitespace }) { holdsManifests = true }
                total += text.utf8.count
                inputs.append(.text(file: "<stdin>", text))
                continue
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                errors.append(InputError(file: path, message: "no such file or directory"))
                continue
            }
            let list = isDir.boolValue ? manifestFiles(in: path, skipped: &skipped) : [path]
            if !list.isEmpty { holdsManifests = true }
            for file in list {
                // One file reached twice (`-f X -f X`, a folder and a file in it, two links to
                // it) is read once: known by its device and inode (resolving each path's links
                // cost a tenth of reading a 50,000-file folder).
                let (id, size) = FileIdentity.of(file)
                guard read.insert(id).inserted else { continue }
                files.append(file)
                // The sizes count before anything is read; a file that grows while it is read
                // is held to its own limit (`maxFileSize`).
                total += size
                if total > maxInput {
                    errors.append(
                        InputError(file: file, message: "the input passes \(maxInput) bytes in all; svcnat reads at most that much"))
                    break
                }
                inputs.append(.file(file))
            }
        }
        var decoder = ManifestDecoder()
        // The files are read by the workers that decode them, so reading shares the cores too.
        for outcome in ManifestDecoder.decodeEach(inputs) {
            switch outcome {
            case .decoded(let d): decoder.merge(d)
            case .unreadable(let file, let why): errors.append(InputError(file: file, message: why))
            }
        }
        for s in skipped { decoder.warn(file: s.path, "skipped: \(s.why)") }
        errors += decoder.errors
        if !errors.isEmpty { throw InputErrors(errors: errors) }
        return Result(
            state: decoder.state, warnings: decoder.warnings, files: files, holdsManifests: holdsManifests, skipped: decoder.skipped,
            origins: decoder.origins)
    }

    /// The manifest files under `dir`, sorted. Only regular files (or links to them) count: a
    /// FIFO, device or socket named `*.yaml` would block a read or never end, so it goes to
    /// `skipped` with the reason.
    public static func manifestFiles(in dir: String, skipped: inout [(path: String, why: String)]) -> [String] {
        var root = stat()
        guard stat(dir, &root) == 0, root.st_mode & S_IFMT == S_IFDIR else { return [] }
        var out: [String] = []
        walk(dir.hasSuffix("/") ? dir : dir + "/", device: root.st_dev, into: &out, skipped: &skipped)
        return out.sorted()
    }

    /// One folder's manifest files, then its sub-folders'. A link to a folder is not followed
    /// (no loop of links can recur) and another file system mounted below is not entered,
    /// as `find -P -xdev` would walk it. Dot-entries are not read: `.git`, editors' swap files,
    /// and the `..data` and `..2026_...` folders of a ConfigMap or projected volume, whose
    /// files are read through the visible links beside them (one view of each). The names come
    /// from one readdir of the folder and each costs one lstat (Foundation's enumerator also
    /// resolved the links of every path it returned: 5% of reading a 50,000-file folder).
    private static func walk(_ base: String, device: dev_t, into out: inout [String], skipped: inout [(path: String, why: String)]) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: base) else { return }
        for name in names where name.utf8.first != UInt8(ascii: ".") {
            let full = base + name
            var st = stat()
            guard lstat(full, &st) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFDIR {
                if st.st_dev == device { walk(full + "/", device: device, into: &out, skipped: &skipped) }
                continue
            }
            guard isManifestName(name) else { continue }
            // A link counts as what it points to.
            if st.st_mode & S_IFMT == S_IFLNK { guard stat(full, &st) == 0 else { continue } }
            switch st.st_mode & S_IFMT {
            case S_IFREG: out.append(full)
            case S_IFDIR: continue
            default: skipped.append((full, "not a regular file (\(fileKind(st.st_mode)))"))
            }
        }
    }

    /// A file as the file system knows it, whatever path reached it; a path that cannot be
    /// looked up stands for itself (reading it then reports why).
    struct FileIdentity: Hashable {
        var device: UInt64 = 0, inode: UInt64 = 0
        var path: String?

        /// The file's identity and size in bytes (0 when it cannot be looked up).
        static func of(_ path: String) -> (FileIdentity, size: Int) {
            var st = stat()
            guard stat(path, &st) == 0 else { return (FileIdentity(path: path), 0) }
            return (FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)), st.st_mode & S_IFMT == S_IFREG ? Int(st.st_size) : 0)
        }
    }

    /// Named `*.yaml`, `*.yml` or `*.json`, in any case (without NSString's path methods, which
    /// cost 3% of reading a 10,000-file folder).
    public static func isManifestName(_ name: String) -> Bool {
        guard let dot = name.utf8.lastIndex(of: UInt8(ascii: ".")) else { return false }
        let ext = name.utf8[name.utf8.index(after: dot)...]
        guard ext.count <= 4, !ext.contains(UInt8(ascii: "/")) else { return false }
        let lower = String(decoding: ext.map { $0 | 0x20 }, as: UTF8.self)
        return lower == "yaml" || lower == "yml" || lower == "json"
    }

    public static func manifestFiles(in dir: String) -> [String] {
        var skipped: [(path: String, why: String)] = []
        return manifestFiles(in: dir, skipped: &skipped)
    }

    static func fileKind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: "a FIFO; give -f - to read a pipe"
        case S_IFCHR, S_IFBLK: "a device"
        case S_IFSOCK: "a socket"
        case S_IFDIR: "a folder"
        default: "not a plain file"
        }
    }

    /// A whole file's bytes, read with plain POSIX calls (Foundation's reader looks up the
    /// environment on every call, which shows at 10,000 files).
    /// Manifest files larger than this are refused: a Kubernetes object is at most 1.5 MB in
    /// etcd, so a bigger file is a mistake, and reading it would cost memory without bound.
    public static let maxFileSize = 64 << 20
    /// All of one read's input together (a folder, or several -f): 10,000 Services with their
    /// EndpointSlices are some 15 MB.
    public static let maxInputSize = 512 << 20

    public enum Read: Sendable {
        case text(String)
        /// Why the file cannot be used, in words for the error.
        case failed(String)
    }

    /// A manifest file's text. It is opened without blocking and must be a regular file, so a
    /// FIFO or device named `*.yaml` cannot hang a read.
    public static func readText(_ path: String) -> Read {
        switch readUTF8(path) {
        case .success(let bytes): .text(String(decoding: bytes, as: UTF8.self))
        case .failure(let e): .failed(e.why)
        }
    }

    public struct Unreadable: Error {
        /// In words for the error.
        public var why: String
    }

    /// The same, as the file's bytes (checked to be UTF-8, without a String made of them).
    public static func readUTF8(_ path: String) -> Swift.Result<[UInt8], Unreadable> {
        func failed(_ why: String) -> Swift.Result<[UInt8], Unreadable> { .failure(Unreadable(why: why)) }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return failed("cannot be read: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return failed("cannot be read: \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { return failed("is not a regular file (\(fileKind(st.st_mode)))") }
        if st.st_size > maxFileSize {
            return failed("is \(st.st_size >> 20) MB; svcnat reads manifest files up to \(maxFileSize >> 20) MB (split it)")
        }
        // The file is read straight into its array, with room for one byte more, which shows
        // whether it grew since fstat; copying it in through a buffer was 14 ms of a 28 MB List.
        var readError: Int32 = 0
        var out = [UInt8](unsafeUninitializedCapacity: Int(st.st_size) + 1) { buffer, count in
            while count < buffer.count {
                let n = read(fd, buffer.baseAddress! + count, buffer.count - count)
                if n < 0 {
                    if errno == EINTR { continue }
                    readError = errno
                    return
                }
                if n == 0 { return }
                count += n
            }
        }
        if readError != 0 { return failed("cannot be read: \(String(cString: strerror(readError)))") }
        // A file that grew is read on to its end.
        var chunk = [UInt8](repeating: 0, count: out.count > st.st_size ? 65536 : 0)
        while !chunk.isEmpty {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return failed("cannot be read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            out += chunk[0..<n]
            if out.count > maxFileSize { return failed("grew past \(maxFileSize >> 20) MB while being read") }
        }
        guard (try? UTF8Span(validating: out.span)) != nil else { return failed("is not UTF-8 text") }
        return .success(out)
    }

    /// Standard input, up to `maxFileSize`; nil when it is longer or not UTF-8.
    public static func readStandardInput() -> String? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { break }
            out += chunk[0..<n]
            if out.count > maxFileSize { return nil }
        }
        return String(validating: out, as: UTF8.self)
    }
}
