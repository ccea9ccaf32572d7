using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Host.Run;
using Vmm.Host.Tests.Run;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;

namespace Vmm.Host.Tests.Stats;

/// <summary>
/// The ManagedVmm.Backend and ManagedVmm.Frontend meters read through a MeterListener, as
/// dotnet-counters or OpenTelemetry would, during a real run: <c>vmm run</c>'s guest against a
/// back-end of ours in this process. Every count equals what the guest did.
/// </summary>
[TestFixture]
public sealed class MetricsTests
{
    private const int ImageBytes = 16 << 20;
    private const int BlockSize = 4096;
    private const int Reads = 50;
    private const int Writes = 20;

    [Test]
    public async Task Requests_bytes_and_latencies_on_both_sides_equal_the_requests_the_guest_made()
    {
        // Names of their own: other tests of this process count under theirs.
        string backendName = $"mblk-{Guid.NewGuid():N}"[..12];
        string frontendName = $"fblk-{Guid.NewGuid():N}"[..12];
        using var listener = new Recorder();
        using var image = new TempImage(ImageBytes, seed: 13);
        string dir = Directory.CreateTempSubdirectory("vmm-metrics-").FullName;
        string socket = Path.Combine(dir, "blk.sock");
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(image.Path)) { MetricsName = backendName };
        using var stop = new CancellationTokenSource();
        using VhostUserBackendServer server = VhostUserBackendServer.Bind(device, socket, NullLogger.Instance);
        Task serving = server.RunAsync(stop.Token);
        try
        {
            using (GuestVm vm = GuestVm.Start(Options(socket, frontendName)))
            {
                var blk = new BlkGuest(vm.Devices[0], vm.Memory, vm.Allocator);
                BlkQueue queue = blk.Queues[0];
                ulong buffer = vm.Allocator.Allocate(BlockSize, BlockSize);
                for (int i = 0; i < Reads + Writes; i++)
                {
                    ulong sector = (ulong)i * (BlockSize / 512);
                    VirtioBlkRequest? request = i < Reads ? queue.TrySubmitRead(sector, buffer, BlockSize) : queue.TrySubmitWrite(sector, buffer, BlockSize);
                    Assert.That(request, Is.Not.Null);
                    queue.Kick();
                    Assert.That(queue.Complete(TimeSpan.FromMinutes(1)).Succeeded, Is.True);
                }

                listener.Collect();
                Assert.Multiple(() =>
                {
                    foreach ((string side, string name) in new[] { ("backend", backendName), ("frontend", frontendName) })
                    {
                        Assert.That(listener.Value($"vmm.{side}.requests", name, "read"), Is.EqualTo(Reads), $"{side} reads");
                        Assert.That(listener.Value($"vmm.{side}.requests", name, "write"), Is.EqualTo(Writes), $"{side} writes");
                        Assert.That(listener.Value($"vmm.{side}.request.bytes", name, "read"), Is.EqualTo(Reads * BlockSize), $"{side} bytes read");
                        Assert.That(listener.Value($"vmm.{side}.request.bytes", name, "write"), Is.EqualTo(Writes * BlockSize), $"{side} bytes written");
                        Assert.That(listener.Records($"vmm.{side}.request.duration", name, "read"), Is.EqualTo(Reads), $"{side} read latencies");
                        Assert.That(listener.Records($"vmm.{side}.request.duration", name, "write"), Is.EqualTo(Writes), $"{side} write latencies");
                        Assert.That(listener.Value($"vmm.{side}.requests.in_flight", name), Is.Zero, $"{side} in flight");
                        Assert.That(listener.Value($"vmm.{side}.queue.kicks", name), Is.Positive, $"{side} kicks");
                        Assert.That(listener.Value($"vmm.{side}.queue.faults", name), Is.Zero, $"{side} faults");
                    }

                    Assert.That(listener.Value("vmm.backend.queue.interrupts", backendName), Is.Positive, "backend interrupts");
                    Assert.That(listener.Value("vmm.backend.sessions", backendName), Is.EqualTo(1));
                    Assert.That(listener.Records("vmm.backend.handshake.duration", backendName), Is.EqualTo(1));
                    Assert.That(listener.Value("vmm.frontend.connections", frontendName), Is.EqualTo(1));
                    Assert.That(listener.Value("vmm.frontend.reconnects", frontendName), Is.Zero);
                    Assert.That(listener.Records("vmm.frontend.handshake.duration", frontendName), Is.EqualTo(1));
                });
            }
        }
        finally
        {
            await stop.CancelAsync();
            await serving.WaitAsync(TimeSpan.FromMinutes(1));
            Directory.Delete(dir, recursive: true);
        }
    }

    private static RunOptions Options(string socket, string name) => new()
    {
        Devices = [new VhostUserDeviceSource(new VhostUserSpec(socket, VirtioDeviceId.Block, null, 256, false, null), name)],
        MemorySize = 64UL << 20,
        Workload = RunWorkload.Verify,
        BlockSize = BlockSize,
        IoDepth = 1,
    };

    /// <summary>
    /// Every ManagedVmm instrument: an observable's last value, a counter's sum, a histogram's
    /// number of records, keyed by instrument, device and direction.
    /// </summary>
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly ConcurrentDictionary<(string Instrument, string Device, string? Direction), long> _values = new();
        private readonly ConcurrentDictionary<(string Instrument, string Device, string? Direction), long> _records = new();

        public Recorder()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name is VmmMeters.BackendName or VmmMeters.FrontendName)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                (string, string, string?) key = Key(instrument, tags);
                if (instrument.IsObservable)
                {
                    _values[key] = value;
                }
                else
                {
                    _values.AddOrUpdate(key, value, (_, sum) => sum + value);
                }
            });
            _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
            {
                // A latency is never negative: one that were would not be counted, and the test would fail on the count.
                if (value >= 0)
                {
                    _records.AddOrUpdate(Key(instrument, tags), 1, (_, n) => n + 1);
                }
            });
            _listener.Start();
        }

        public void Collect() => _listener.RecordObservableInstruments();

        /// <summary>The value summed over queues.</summary>
        public long Value(string instrument, string device, string? direction = null) =>
            _values.Where(p => p.Key.Instrument == instrument && p.Key.Device == device && p.Key.Direction == direction).Sum(p => p.Value);

        public long Records(string instrument, string device, string? direction = null) =>
            _records.Where(p => p.Key.Instrument == instrument && p.Key.Device == device && p.Key.Direction == direction).Sum(p => p.Value);

        public void Dispose() => _listener.Dispose();

        private static (string, string, string?) Key(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string device = "";
            string? direction = null;
            foreach (KeyValuePair<string, object?> tag in tags)
            {
                if (tag.Key == VmmMeters.DeviceTag)
                {
                    device = (string)tag.Value!;
                }
                else if (tag.Key == VmmMeters.DirectionTag)
                {
                    direction = (string)tag.Value!;
                }
            }

            return (instrument.Name, device, direction);
        }
    }
}
