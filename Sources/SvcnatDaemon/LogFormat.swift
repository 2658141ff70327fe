import Foundation
import Logging
import NFTModel
import Synchronization

/// The daemon's log lines on standard error, as kube-proxy's `--logging-format` offers them:
/// `text` (a UTC timestamp with milliseconds, the level, the label, the message) or `json` (one
/// object per line: `ts` in seconds since the epoch with milliseconds, `level`, `msg`, and the
/// metadata as strings).
public struct SvcnatLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable { case text, json }

    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: Format
    let write: @Sendable (String) -> Void

    public init(label: String, format: Format, write: @escaping @Sendable (String) -> Void = SvcnatLogHandler.standardError) {
        self.label = label
        self.format = format
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    private static let lock = Mutex(())
    /// One whole line per write, lines of several threads never interleaved.
    public static let standardError: @Sendable (String) -> Void = { line in
        lock.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let m = event.metadata { all.merge(m) { _, new in new } }
        write(
            Self.line(
                format, at: Date(), level: event.level, label: label, source: event.source, message: "\(event.message)", metadata: all))
    }

    /// One line, for `date` (pure, so tests can pin it).
    public static func line(
        _ format: Format, at date: Date, level: Logger.Level, label: String, source: String, message: String, metadata: Logger.Metadata
    ) -> String {
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        switch format {
        case .text:
            let meta =
                metadata.isEmpty ? "" : " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            return "\(timestamp(ms)) \(level) \(label): [\(source)]\(meta) \(message)\n"
        case .json:
            var fields: [(String, String)] = [("level", level.rawValue), ("msg", message), ("source", source)]
            fields += metadata.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
            let body = fields.map { "\(JSON.escape($0.0)):\(JSON.escape($0.1))" }.joined(separator: ",")
            return "{\"ts\":\(ms / 1000).\(String(format: "%03d", ms % 1000)),\(body)}\n"
        }
    }

    /// 2026-12-03T01:10:05.123Z
    static func timestamp(_ ms: Int64) -> String {
        var t = time_t(ms / 1000)
        var tm = tm()
        gmtime_r(&t, &tm)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday), Int(tm.tm_hour),
            Int(tm.tm_min), Int(tm.tm_sec), Int(ms % 1000))
    }
}
