import Foundation
import SvcnatModel
import SvcnatSources

/// The manifests of one folder, file by file. A file that fails to parse or validate keeps its
/// last good objects in force and is listed in `rejected` until it is fixed.
public final class ManifestStore {
    public let root: String
    private var good: [String: ClusterState] = [:]
    public private(set) var rejected: [String: [InputError]] = [:]
    public private(set) var warnings: [Warning] = []

    public init(root: String) { self.root = (root as NSString).standardizingPath }

    static func isManifest(_ path: String) -> Bool {
        ["yaml", "yml", "json"].contains((path as NSString).pathExtension.lowercased())
    }

    /// Reads every manifest under the root.
    public func loadAll() {
        good = [:]
        rejected = [:]
        reload(ManifestSource.manifestFiles(in: root))
    }

    /// Re-reads the given paths: files written or created are decoded again, files gone are
    /// forgotten, folders are scanned. Returns whether anything that counts changed.
    @discardableResult
    public func reload(_ paths: [String]) -> Bool {
        var changed = false
        for path in Set(paths.map { ($0 as NSString).standardizingPath }) {
            var isDir: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
            if exists && isDir.boolValue {
                if reload(ManifestSource.manifestFiles(in: path)) { changed = true }
                continue
            }
            if !exists {
                // A file or a whole folder went away.
                let gone = good.keys.filter { $0 == path || $0.hasPrefix(path + "/") }
                for g in gone { good[g] = nil }
                let goneRejected = rejected.keys.filter { $0 == path || $0.hasPrefix(path + "/") }
                for g in goneRejected { rejected[g] = nil }
                if !gone.isEmpty || !goneRejected.isEmpty { changed = true }
                continue
            }
            guard Self.isManifest(path) else { continue }
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                rejected[path] = [InputError(file: path, message: "cannot be read as UTF-8 text")]
                changed = true
                continue
            }
            var decoder = ManifestDecoder()
            decoder.decode(text, file: path)
            warnings += decoder.warnings
            if decoder.errors.isEmpty {
                if good[path] != decoder.state { good[path] = decoder.state; changed = true }
                if rejected.removeValue(forKey: path) != nil { changed = true }
            } else {
                rejected[path] = decoder.errors
                changed = true
            }
        }
        return changed
    }

    /// All files' good objects together; the first file (by path) wins when two define the same
    /// object.
    public var state: ClusterState {
        var s = ClusterState()
        var seen = Set<String>()
        func fresh(_ kind: String, _ m: ObjectMeta) -> Bool { seen.insert("\(kind) \(m.key)").inserted }
        for path in good.keys.sorted() {
            let f = good[path]!
            s.services += f.services.filter { fresh("Service", $0.meta) }
            s.endpointSlices += f.endpointSlices.filter { fresh("EndpointSlice", $0.meta) }
            s.endpoints += f.endpoints.filter { fresh("Endpoints", $0.meta) }
            s.pods += f.pods.filter { fresh("Pod", $0.meta) }
            s.ingresses += f.ingresses.filter { fresh("Ingress", $0.meta) }
        }
        return s
    }

    public func takeWarnings() -> [Warning] {
        defer { warnings = [] }
        return warnings
    }
}
