import Foundation
import NFTModel
import SvcnatModel

/// Reads manifests from files, folders (recursively: *.yaml, *.yml, *.json) and standard input.
public enum ManifestSource {
    public struct Result: Sendable {
        public var state: ClusterState
        public var warnings: [Warning]
        public var files: [String]
    }

    /// Loads every path; throws `InputErrors` listing every problem found, or returns the state.
    public static func load(_ paths: [String], stdin: () -> String? = { readStandardInput() }) throws -> Result {
        var decoder = ManifestDecoder()
        var errors: [InputError] = []
        var files: [String] = []
        for path in paths {
            if path == "-" {
                files.append("-")
                guard let text = stdin() else {
                    errors.append(InputError(file: "<stdin>", message: "is not UTF-8 text of at most \(maxFileSize >> 20) MB"))
                    continue
                }
                decoder.decode(text, file: "<stdin>")
                continue
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                errors.append(InputError(file: path, message: "no such file or directory"))
                continue
            }
            let list = isDir.boolValue ? manifestFiles(in: path) : [path]
            for file in list {
                files.append(file)
                guard let bytes = readFile(file) else {
                    let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? 0
                    errors.append(
                        InputError(
                            file: file,
                            message: size > maxFileSize
                                ? "is \(size >> 20) MB; svcnat reads manifest files up to \(maxFileSize >> 20) MB (split it)"
                                : "cannot be read"))
                    continue
                }
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    errors.append(InputError(file: file, message: "is not UTF-8 text"))
                    continue
                }
                decoder.decode(text, file: file)
            }
        }
        errors += decoder.errors
        if !errors.isEmpty { throw InputErrors(errors: errors) }
        return Result(state: decoder.state, warnings: decoder.warnings, files: files)
    }

    public static func manifestFiles(in dir: String) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            let ext = (rel as NSString).pathExtension.lowercased()
            if ["yaml", "yml", "json"].contains(ext) {
                let full = (dir as NSString).appendingPathComponent(rel)
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: full, isDirectory: &isDir), !isDir.boolValue { out.append(full) }
            }
        }
        return out.sorted()
    }

    /// A whole file's bytes, read with plain POSIX calls (Foundation's reader looks up the
    /// environment on every call, which shows at 10,000 files).
    /// Manifest files larger than this are refused: a Kubernetes object is at most 1.5 MB in
    /// etcd, so a bigger file is a mistake, and reading it would cost memory without bound.
    public static let maxFileSize = 64 << 20

    public static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return nil }
            if n == 0 { return out }
            out += chunk[0..<n]
            if out.count > maxFileSize { return nil }
        }
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
