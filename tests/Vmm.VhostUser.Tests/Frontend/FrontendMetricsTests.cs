using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using NUnit.Framework;
using Vmm.Virtio.Metrics;
using Vmm.VhostUser.Frontend;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// The front-end's connection instruments (ManagedVmm.Frontend) read through a MeterListener
/// while a device loses its back-end and connects to the next: one connection, then a
/// reconnect, a handshake time each, and the loss counted as a fault.
/// </summary>
[TestFixture]
public sealed class FrontendMetricsTests : AkkaTest
{
    [Test]
    public async Task A_lost_backend_counts_a_fault_and_the_next_connection_a_reconnect()
    {
        string name = $"mdev-{Guid.NewGuid():N}"[..12];
        var counts = new ConcurrentDictionary<string, long>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == VmmMeters.FrontendName)
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (Tagged(tags, name))
            {
                counts.AddOrUpdate(instrument.Name, value, (_, sum) => sum + value);
            }
        });
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            if (Tagged(tags, name) && value >= 0)
            {
                counts.AddOrUpdate(instrument.Name, 1, (_, n) => n + 1);
            }
        });
        listener.Start();

        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { Name = name });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync();
        using VhostUserDevice device = await connect;
        Assert.That(counts.GetValueOrDefault("vmm.frontend.connections"), Is.EqualTo(1));
        Assert.That(counts.GetValueOrDefault("vmm.frontend.reconnects"), Is.Zero);

        first.Dispose();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync();
        await AwaitConditionAsync(() => counts.GetValueOrDefault("vmm.frontend.connections") == 2);

        Assert.Multiple(() =>
        {
            Assert.That(counts.GetValueOrDefault("vmm.frontend.reconnects"), Is.EqualTo(1));
            Assert.That(counts.GetValueOrDefault("vmm.frontend.handshake.duration"), Is.EqualTo(2));
            Assert.That(counts.GetValueOrDefault("vmm.frontend.faults"), Is.EqualTo(1), "the lost connection");
        });
    }

    private static bool Tagged(ReadOnlySpan<KeyValuePair<string, object?>> tags, string device)
    {
        foreach (KeyValuePair<string, object?> tag in tags)
        {
            if (tag.Key == VmmMeters.DeviceTag && (string?)tag.Value == device)
            {
                return true;
            }
        }

        return false;
    }
}
