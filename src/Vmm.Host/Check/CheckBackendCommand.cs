using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Spectre.Console;
using Vmm.Host.Cli;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Conformance;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Check;

/// <summary>
/// <c>vmm check-backend SOCKET --type T</c>: runs the vhost-user conformance checks
/// (<see cref="VhostUserConformance"/>) against a back-end and prints one row per check, or one
/// JSON document. Exit code 0 when no check failed, 1 when one did, 2 for bad usage or a socket
/// nobody answers on.
/// </summary>
public static class CheckBackendCommand
{
    public static Command Create()
    {
        var socket = new Argument<string>("SOCKET") { Description = "Path of the back-end's vhost-user socket." };
        var type = new Option<string>("--type")
        {
            Description = $"Device type the back-end serves: {string.Join("|", VhostUserDeviceType.Names)} or device-id=N.",
            Required = true,
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON document instead of a table." };
        var allowWrites = new Option<bool>("--allow-writes")
        {
            Description = "blk: also write a pattern (then restore the original). Without it only the bytes just read are written back.",
        };
        var timeout = new Option<double>("--timeout")
        {
            Description = "Seconds a reply or a completion may take.",
            DefaultValueFactory = _ => ConformanceOptions.DefaultTimeout.TotalSeconds,
        };
        var queueSize = new Option<int>("--queue-size")
        {
            Description = "Size of the rings the checker sets up (a power of two).",
            DefaultValueFactory = _ => ConformanceOptions.DefaultQueueSize,
        };

        var command = new Command("check-backend", "Check a vhost-user back-end against the vhost-user and virtio specifications.")
        {
            socket, type, json, allowWrites, timeout, queueSize,
        };
        command.SetAction((result, cancellationToken) =>
        {
            string typeText = result.GetValue(type)!;
            if (!VhostUserDeviceType.TryParse(typeText, out VirtioDeviceId deviceId))
            {
                throw new UsageException($"Unknown device type '{typeText}': use one of {string.Join(", ", VhostUserDeviceType.Names)} or device-id=N.");
            }

            double seconds = result.GetValue(timeout);
            if (!(seconds > 0 && seconds <= 3600))
            {
                throw new UsageException("--timeout must be more than 0 and at most 3600 seconds.");
            }

            int size = result.GetValue(queueSize);
            if (size is < 2 or > VirtqueueLayout.MaxQueueSize || (size & (size - 1)) != 0)
            {
                throw new UsageException("--queue-size must be a power of two from 2 to 32768.");
            }

            var options = new ConformanceOptions
            {
                DeviceType = deviceId,
                Timeout = TimeSpan.FromSeconds(seconds),
                QueueSize = (ushort)size,
                AllowWrites = result.GetValue(allowWrites),
            };
            return RunAsync(result.GetValue(socket)!, options, result.GetValue(json), cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string socketPath, ConformanceOptions options, bool json, CancellationToken cancellationToken)
    {
        ConformanceReport report;
        try
        {
            report = await VhostUserConformance.RunAsync(socketPath, options, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Only the first connection escapes the run: whatever happens after it is a check result.
            throw new UsageException(e.Message, e);
        }

        if (json)
        {
            Console.Out.WriteLine(ToJson(report));
        }
        else
        {
            WriteTable(report);
        }

        return report.Succeeded ? ExitCodes.Success : ExitCodes.WorkloadFailed;
    }

    /// <summary>The report as one JSON document (snake_case names, as <c>vmm run --json</c>).</summary>
    public static string ToJson(ConformanceReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            writer.WriteString("socket", report.Target);
            writer.WriteString("type", VhostUserDeviceType.NameOf(report.DeviceType));
            writer.WriteNumber("device_id", (ushort)report.DeviceType);
            WriteHex(writer, "features", report.Features);
            WriteHex(writer, "protocol_features", (ulong?)report.ProtocolFeatures);
            if (report.QueueCount is int queues)
            {
                writer.WriteNumber("queues", queues);
            }
            else
            {
                writer.WriteNull("queues");
            }

            writer.WriteStartArray("checks");
            foreach (ConformanceResult result in report.Results)
            {
                writer.WriteStartObject();
                writer.WriteString("id", result.Id);
                writer.WriteString("title", result.Check.Title);
                writer.WriteString("result", Label(result.Outcome));
                writer.WriteString("why", result.Why);
                writer.WriteString("spec", result.Check.Spec);
                writer.WriteEndObject();
            }

            writer.WriteEndArray();
            writer.WriteNumber("passed", report.Passed);
            writer.WriteNumber("failed", report.Failed);
            writer.WriteNumber("not_applicable", report.NotApplicable);
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>PASS, FAIL or N/A.</summary>
    public static string Label(ConformanceOutcome outcome) => outcome switch
    {
        ConformanceOutcome.Pass => "PASS",
        ConformanceOutcome.Fail => "FAIL",
        _ => "N/A",
    };

    private static void WriteHex(Utf8JsonWriter writer, string name, ulong? value)
    {
        if (value is ulong v)
        {
            writer.WriteString(name, "0x" + v.ToString("x", CultureInfo.InvariantCulture));
        }
        else
        {
            writer.WriteNull(name);
        }
    }

    private static void WriteTable(ConformanceReport report)
    {
        var table = new Table()
            .Title(Markup.Escape($"vmm check-backend {report.Target} --type {VhostUserDeviceType.NameOf(report.DeviceType)}"));
        table.AddColumn("check");
        table.AddColumn("result");
        table.AddColumn("why");
        table.AddColumn("spec");
        foreach (ConformanceResult result in report.Results)
        {
            string color = result.Outcome switch
            {
                ConformanceOutcome.Pass => "green",
                ConformanceOutcome.Fail => "red",
                _ => "grey",
            };
            table.AddRow(
                Markup.Escape(result.Id),
                $"[{color}]{Label(result.Outcome)}[/]",
                Markup.Escape(result.Why),
                Markup.Escape(result.Check.Spec));
        }

        if (Console.IsOutputRedirected)
        {
            // Not a terminal: no width to fit, so do not wrap the table at Spectre's default of 80.
            AnsiConsole.Profile.Width = 200;
        }

        AnsiConsole.Write(table);
        Console.Out.WriteLine(
            $"{report.Passed} passed, {report.Failed} failed, {report.NotApplicable} not applicable" +
            (report.Features is ulong f ? $"; features 0x{f:x}" : "") +
            (report.ProtocolFeatures is { } p ? $", protocol features 0x{(ulong)p:x}" : "") +
            (report.QueueCount is int q ? $", {q} queues" : ""));
    }
}
