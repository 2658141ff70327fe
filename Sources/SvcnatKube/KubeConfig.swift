import Foundation
import Yams

/// Where the API server is and how to prove who we are: from a kubeconfig file, as kubectl
/// reads it, or from a pod's in-cluster service account.
public struct APIConfig: Sendable, Equatable {
    public var server: String
    /// PEM of the certificate authorities to trust; nil means the system's.
    public var caPEM: [UInt8]?
    public var insecureSkipTLSVerify = false
    public var token: String?
    /// Read again before each request (projected service-account tokens rotate).
    public var tokenFile: String?
    public var clientCertificatePEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    /// Where this came from, for messages ("kubeconfig /x, context y", "in-cluster").
    public var origin: String

    public init(server: String, origin: String) {
        self.server = server
        self.origin = origin
    }

    /// The bearer token for the next request, if any.
    public func currentToken() throws -> String? {
        if let tokenFile {
            guard let data = FileManager.default.contents(atPath: tokenFile), let t = String(data: data, encoding: .utf8) else {
                throw KubeConfigError("\(origin): cannot read token file \(tokenFile)")
            }
            return t.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return token
    }
}

public struct KubeConfigError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

public enum KubeConfig {
    /// Reads a kubeconfig: `context` or its current-context, that context's cluster and user.
    /// Relative file paths are relative to the kubeconfig's folder, as kubectl reads them.
    public static func load(path: String, context wanted: String? = nil) throws -> APIConfig {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KubeConfigError("kubeconfig \(path): cannot be read")
        }
        return try parse(text, path: path, context: wanted)
    }

    public static func parse(_ text: String, path: String, context wanted: String? = nil) throws -> APIConfig {
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw KubeConfigError("kubeconfig \(path): not valid YAML: \(error)") }
        guard let doc = root as? [String: Any] else { throw KubeConfigError("kubeconfig \(path): expected a mapping") }
        let dir = (path as NSString).deletingLastPathComponent

        func named(_ list: String, _ name: String, _ inner: String) throws -> [String: Any] {
            let entries = doc[list] as? [[String: Any]] ?? []
            guard let e = entries.first(where: { $0["name"] as? String == name }) else {
                throw KubeConfigError("kubeconfig \(path): \(list) has no entry named \"\(name)\"")
            }
            return e[inner] as? [String: Any] ?? [:]
        }
        guard let contextName = wanted ?? (doc["current-context"] as? String).flatMap({ $0.isEmpty ? nil : $0 }) else {
            throw KubeConfigError("kubeconfig \(path): no current-context; name one with --context")
        }
        let context = try named("contexts", contextName, "context")
        guard let clusterName = context["cluster"] as? String else {
            throw KubeConfigError("kubeconfig \(path): context \(contextName) names no cluster")
        }
        let cluster = try named("clusters", clusterName, "cluster")
        let user = try (context["user"] as? String).map { try named("users", $0, "user") } ?? [:]
        let origin = "kubeconfig \(path), context \(contextName)"

        guard let server = cluster["server"] as? String, server.hasPrefix("https://") || server.hasPrefix("http://") else {
            throw KubeConfigError("\(origin): cluster \(clusterName) has no server URL (https://...)")
        }
        var config = APIConfig(server: server.hasSuffix("/") ? String(server.dropLast()) : server, origin: origin)
        func file(_ p: String) -> String { p.hasPrefix("/") ? p : (dir as NSString).appendingPathComponent(p) }
        func bytes(data key: String, file fileKey: String, in m: [String: Any], what: String) throws -> [UInt8]? {
            if let b64 = m[key] as? String {
                guard let d = Data(base64Encoded: b64.filter { !$0.isWhitespace }) else {
                    throw KubeConfigError("\(origin): \(key) is not base64")
                }
                return Array(d)
            }
            if let p = m[fileKey] as? String {
                guard let d = FileManager.default.contents(atPath: file(p)) else {
                    throw KubeConfigError("\(origin): cannot read \(what) \(file(p))")
                }
                return Array(d)
            }
            return nil
        }
        config.caPEM = try bytes(
            data: "certificate-authority-data", file: "certificate-authority", in: cluster, what: "certificate-authority")
        config.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        config.token = user["token"] as? String
        config.tokenFile = (user["tokenFile"] as? String).map(file)
        config.clientCertificatePEM = try bytes(
            data: "client-certificate-data", file: "client-certificate", in: user, what: "client-certificate")
        config.clientKeyPEM = try bytes(data: "client-key-data", file: "client-key", in: user, what: "client-key")
        if (config.clientCertificatePEM == nil) != (config.clientKeyPEM == nil) {
            throw KubeConfigError("\(origin): user has a client certificate without its key, or a key without its certificate")
        }
        return config
    }

    public static let inClusterOrigin = "in-cluster service account"

    /// The in-cluster configuration of a pod: KUBERNETES_SERVICE_HOST/PORT and the service
    /// account's token and CA. nil when not in a pod.
    public static func inCluster(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        accountDir: String = "/var/run/secrets/kubernetes.io/serviceaccount"
    ) throws -> APIConfig? {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else { return nil }
        let hostPart = host.contains(":") ? "[\(host)]" : host
        var config = APIConfig(server: "https://\(hostPart):\(port)", origin: inClusterOrigin)
        config.tokenFile = accountDir + "/token"
        guard let ca = FileManager.default.contents(atPath: accountDir + "/ca.crt") else {
            throw KubeConfigError("in-cluster: cannot read \(accountDir)/ca.crt")
        }
        config.caPEM = Array(ca)
        return config
    }
}
