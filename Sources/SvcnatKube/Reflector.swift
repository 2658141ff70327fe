import Foundation
import NFTModel
import SvcnatModel
import SvcnatSources

/// Keeps one collection in step, as client-go's reflector does: list, then watch from the
/// list's resourceVersion (bookmarks included); after a dropped connection, watch again from the
/// last resourceVersion seen; on 410 Gone, list again; while the server is away, back off
/// (0.5 s doubling to 30 s, with jitter), and so between relists that no watch event separates.
/// Changes and status go to the callbacks, in order.
public final class Reflector: Sendable {
    public enum Change: Sendable {
        /// A complete list: these objects and no others, but for `kept` (keys of items that
        /// failed to decode: their last good versions stay).
        case replaced([APIObjects.Object], kept: [String])
        case put(APIObjects.Object)
        case deleted(APIObjects.Object)
    }

    public enum Status: Sendable {
        case listed(objects: Int, resourceVersion: String)
        case watching(resourceVersion: String)
        case relisting(reason: String)
        case failed(String, retryIn: Double)
        case rejected([InputError])
    }

    let client: APIClient
    public let resource: Resource
    let watchTimeout: Int
    let onChange: @Sendable (Change) -> Void
    let onStatus: @Sendable (Status) -> Void

    public init(
        client: APIClient, resource: Resource, watchTimeout: Int = 300,
        onChange: @escaping @Sendable (Change) -> Void, onStatus: @escaping @Sendable (Status) -> Void
    ) {
        self.client = client
        self.resource = resource
        self.watchTimeout = watchTimeout
        self.onChange = onChange
        self.onStatus = onStatus
    }

    /// Runs until the task is cancelled.
    public func run() async {
        var resourceVersion: String?
        var failures = 0
        // Relists in a row without a watch event between them: a server that answers every
        // watch with 410 gets relists at the backoff's pace, not as fast as it can answer.
        var relists = 0
        while !Task.isCancelled {
            do {
                if resourceVersion == nil {
                    if relists > 1 {
                        let delay = Self.backoff(relists - 1)
                        onStatus(.failed("relisting again after \(relists - 1) relists without a watch event", retryIn: delay))
                        try? await Task.sleep(nanoseconds: UInt64(delay * 1e9))
                        if Task.isCancelled { return }
                    }
                    let list = try await client.list(resource)
                    if !list.errors.isEmpty { onStatus(.rejected(list.errors)) }
                    onChange(.replaced(list.objects.filter { resource.admits($0.labels) }, kept: list.failedKeys))
                    resourceVersion = list.resourceVersion
                    onStatus(.listed(objects: list.objects.count, resourceVersion: list.resourceVersion))
                }
                onStatus(.watching(resourceVersion: resourceVersion!))
                try await client.watch(resource, from: resourceVersion!, timeoutSeconds: watchTimeout) { event, errors in
                    if !errors.isEmpty { onStatus(.rejected(errors)) }
                    failures = 0
                    if case .error? = event {} else { relists = 0 }
                    switch event {
                    case .added(let o)?, .modified(let o)?:
                        // A label change can take an object out of svcnat's view.
                        onChange(resource.admits(o.labels) ? .put(o) : .deleted(o))
                        if let rv = o.resourceVersion { resourceVersion = rv }
                    case .deleted(let o)?:
                        onChange(.deleted(o))
                        if let rv = o.resourceVersion { resourceVersion = rv }
                    case .bookmark(let rv)?:
                        resourceVersion = rv
                    case .error(let code, let message)?:
                        if code == 410 { throw WatchGone() }
                        throw APIError(status: code, "\(resource.name): watch error \(code): \(message)")
                    case nil:
                        break
                    }
                }
                // The server closed the stream at its timeout: watch again from where we are.
            } catch is WatchGone {
                onStatus(.relisting(reason: "resourceVersion \(resourceVersion ?? "?") is too old (410 Gone)"))
                resourceVersion = nil
                relists += 1
            } catch {
                if Task.isCancelled { return }
                if let e = error as? APIError, e.status == 410 {
                    onStatus(.relisting(reason: "410 Gone"))
                    resourceVersion = nil
                    relists += 1
                    continue
                }
                failures += 1
                let delay = Self.backoff(failures)
                onStatus(.failed(String(describing: error), retryIn: delay))
                try? await Task.sleep(nanoseconds: UInt64(delay * 1e9))
            }
        }
    }

    /// 0.5 s doubling to 30 s for the nth failure in a row, jittered down to half.
    static func backoff(_ n: Int) -> Double {
        min(30.0, 0.5 * pow(2.0, Double(min(max(n, 1) - 1, 6)))) * Double.random(in: 0.5...1.0)
    }
}
