using System.Text;
using System.Text.Json;
using Vmm.Virtio.Machine;

namespace Vmm.Host.Run;

/// <summary>The one-line JSON object <c>bench --json</c> prints, for every device type: its own figures, then what ran.</summary>
public static class BenchJson
{
    public static void WriteLine(TextWriter output, RunOptions options, string device, Action<Utf8JsonWriter> figures)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(figures);
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream))
        {
            json.WriteStartObject();
            figures(json);
            json.WriteString("device", device);
            json.WriteString("transport", RunOptions.Name(options.Transport));
            json.WriteString("ring", options.PackedRing ? "packed" : "split");
            json.WriteString("interrupts", options.Delivery == GuestInterruptDelivery.EventBacked ? "event" : "function");
            json.WriteEndObject();
        }

        output.WriteLine(Encoding.UTF8.GetString(stream.ToArray()));
    }
}
