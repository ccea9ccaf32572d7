using System.Globalization;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Vmm.Host.Cli;

/// <summary>
/// Logs go to stderr: stdout is for results that scripts read (checksums, JSON). One line per
/// entry, written at once: <c>HH:mm:ss.fff info: vmm.serve[0] Serving blk on /run/blk.sock</c>
/// (the layout of Microsoft.Extensions.Logging's simple console formatter with a single line).
/// </summary>
/// <remarks>
/// Written here rather than through Microsoft.Extensions.Logging.Console: the console provider
/// brings dependency injection, options binding and a queue thread into the lean serve binary
/// (docs/performance.md, "A lean backend process"), for a handful of lines per connection.
/// </remarks>
public static class StderrLogging
{
    public static ILoggerFactory Create(LogLevel minimum = LogLevel.Information) => new Factory(minimum, Console.Error);

    /// <summary>A factory whose loggers write to <paramref name="output"/>.</summary>
    internal static ILoggerFactory Create(LogLevel minimum, TextWriter output) => new Factory(minimum, output);

    /// <summary>The short level names of the simple console formatter.</summary>
    internal static string LevelName(LogLevel level) => level switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        LogLevel.Critical => "crit",
        _ => level.ToString(),
    };

    private sealed class Factory(LogLevel minimum, TextWriter output) : ILoggerFactory
    {
        private readonly Lock _write = new();

        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

        public void AddProvider(ILoggerProvider provider) => throw new NotSupportedException("Stderr logging has no providers to add.");

        public void Dispose()
        {
        }

        public bool IsEnabled(LogLevel level) => level != LogLevel.None && level >= minimum;

        public void Write(string line)
        {
            lock (_write)
            {
                output.Write(line);
                output.Flush();
            }
        }
    }

    private sealed class Logger(Factory factory, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => factory.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            ArgumentNullException.ThrowIfNull(formatter);
            if (!IsEnabled(logLevel))
            {
                return;
            }

            string message = formatter(state, exception);
            if (string.IsNullOrEmpty(message) && exception is null)
            {
                return;
            }

            var line = new StringBuilder(64 + message.Length);
            line.Append(DateTimeOffset.Now.ToString("HH:mm:ss.fff ", CultureInfo.InvariantCulture))
                .Append(LevelName(logLevel)).Append(": ")
                .Append(category).Append('[').Append(eventId.Id.ToString(CultureInfo.InvariantCulture)).Append("] ");
            AppendOneLine(line, message);
            if (exception is not null)
            {
                line.Append(' ');
                AppendOneLine(line, exception.ToString());
            }

            line.Append('\n');
            factory.Write(line.ToString());
        }

        // A single-line entry keeps a message's line breaks as spaces.
        private static void AppendOneLine(StringBuilder line, string text) =>
            line.Append(text.ReplaceLineEndings(" "));
    }
}
