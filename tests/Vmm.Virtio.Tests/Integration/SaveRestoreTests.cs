using NUnit.Framework;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Tests.Devices;

namespace Vmm.Virtio.Tests.Integration;

/// <summary>
/// Save and restore under load: while the guest keeps a stream of writes in flight, every queue of
/// the running device is stopped (StopQueue returns where it stopped) and the device's own state
/// saved; a fresh <see cref="VirtioBlkDevice"/> on the same image and guest memory restores that
/// state and starts its queues from the saved indices. The guest never notices: every request
/// completes exactly once and the data is right.
/// </summary>
[TestFixture]
public sealed class SaveRestoreTests
{
    private const int Sector = VirtioBlk.SectorSize;

    [Test, Combinatorial]
    public void A_fresh_device_resumes_the_queues_mid_workload(
        [Values(VirtioTransportKind.Mmio, VirtioTransportKind.Pci)] VirtioTransportKind transport,
        [Values(false, true)] bool packed)
    {
        const int requests = 3000;
        const int blocks = 2;
        using var bed = new BlkTestBed(requests * blocks * (long)Sector, fill: 0);
        using var device = new SwappableDevice(bed.CreateDevice());
        var options = new VirtioDriverOptions { PackedRing = packed, QueueSize = 64 };
        using var guest = new MachineBlkGuest(device, transport, GuestInterruptDelivery.EventBacked, null, options);

        // Writeback off before the save: the restored device must come back with it off.
        guest.Driver.WriteConfig(VirtioBlkConfig.WritebackOffset, [0]);
        var completions = new int[requests];
        var failed = new List<string>();
        ulong buffers = guest.Allocator.Allocate((ulong)(requests * blocks * Sector), 4096);
        void Complete(VirtioBlkRequest r)
        {
            int i = (int)r.State!;
            completions[i]++;
            if (!r.Succeeded)
            {
                failed.Add($"request {i}: status {r.Status}");
            }
        }

        VirtqueueState[] saved = [];
        for (int i = 0; i < requests; i++)
        {
            ulong b = buffers + (ulong)(i * blocks * Sector);
            VerifyFill(guest, b, i);
            ulong sector = (ulong)(i * blocks);
            int index = i;
            guest.Submit(r => r.TrySubmitWrite(sector, [new(b, blocks * Sector, false)], index), Complete);
            if (i == requests / 2)
            {
                // Mid-stream, with requests in flight on the ring.
                Assert.That(guest.InFlight, Is.GreaterThan(0));
                saved = device.SwapForFresh(() => bed.CreateDevice());
            }
        }

        while (guest.InFlight > 0)
        {
            Complete(guest.WaitOne());
        }

        byte[] file = bed.ReadWholeFile();
        VirtqueueState? final = device.Inner.StopQueue(0);
        Assert.Multiple(() =>
        {
            Assert.That(saved, Has.Length.EqualTo(1));
            Assert.That(failed, Is.Empty);
            Assert.That(completions, Is.All.EqualTo(1), "every request completed exactly once");
            Assert.That(device.Swaps, Is.EqualTo(1));
            Assert.That(((VirtioBlkDevice)device.Inner).Config.Writeback, Is.Zero, "the device state came across");
            Assert.That(final, Is.Not.Null);
            Assert.That(final!.Value.UsedIndex, Is.EqualTo(final.Value.AvailableIndex), "nothing taken and left unanswered");
            for (int i = 0; i < requests; i++)
            {
                byte[] want = new byte[blocks * Sector];
                Pattern(want, i);
                Assert.That(file.AsSpan(i * blocks * Sector, blocks * Sector).SequenceEqual(want), Is.True, $"request {i} on disk");
            }
        });
    }

    private static void VerifyFill(MachineBlkGuest guest, ulong address, int i)
    {
        byte[] bytes = new byte[2 * Sector];
        Pattern(bytes, i);
        guest.Memory.Write(address, bytes);
    }

    private static void Pattern(Span<byte> bytes, int i)
    {
        for (int k = 0; k < bytes.Length; k++)
        {
            bytes[k] = (byte)((i * 31) + (k * 7) + (i >> 8));
        }
    }
}

/// <summary>
/// An <see cref="IVirtioDevice"/> whose implementation can be replaced under a running transport:
/// the transport keeps talking to this object while <see cref="SwapForFresh"/> moves the queues
/// and device state from the old device to a new one (what a migration or a back-end restart does).
/// </summary>
internal sealed class SwappableDevice : IVirtioDevice
{
    private readonly object _lock = new();
    private readonly Dictionary<int, (VirtqueueResources Resources, ulong Features)> _started = [];

    public SwappableDevice(IVirtioDevice inner)
    {
        Inner = inner;
        Subscribe(inner);
    }

    public IVirtioDevice Inner { get; private set; }

    public int Swaps { get; private set; }

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted;

    public VirtioDeviceId DeviceId => Inner.DeviceId;

    public ulong DeviceFeatures => Inner.DeviceFeatures;

    public int QueueCount => Inner.QueueCount;

    public int ConfigSize => Inner.ConfigSize;

    public ushort GetMaxQueueSize(int index) => Inner.GetMaxQueueSize(index);

    public void ReadConfig(uint offset, Span<byte> data) => Inner.ReadConfig(offset, data);

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => Inner.WriteConfig(offset, data);

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
        lock (_lock)
        {
            _started[index] = (resources, features);
            Inner.StartQueue(index, resources, features, initialState);
        }
    }

    public VirtqueueState? StopQueue(int index)
    {
        lock (_lock)
        {
            _started.Remove(index);
            return Inner.StopQueue(index);
        }
    }

    public void Reset()
    {
        lock (_lock)
        {
            _started.Clear();
            Inner.Reset();
        }
    }

    public byte[] SaveState() => Inner.SaveState();

    public void RestoreState(ReadOnlySpan<byte> state) => Inner.RestoreState(state);

    /// <summary>Stops every started queue, saves, restores into a fresh device, starts its queues from the saved states.</summary>
    public VirtqueueState[] SwapForFresh(Func<IVirtioDevice> create)
    {
        lock (_lock)
        {
            IVirtioDevice old = Inner;
            var states = _started.Keys.Order().Select(i => (Index: i, State: old.StopQueue(i) ?? throw new InvalidOperationException($"queue {i} had no state"))).ToArray();
            byte[] deviceState = old.SaveState();
            IVirtioDevice fresh = create();
            fresh.RestoreState(deviceState);
            Unsubscribe(old);
            old.Dispose();
            Inner = fresh;
            Subscribe(fresh);
            foreach ((int index, VirtqueueState state) in states)
            {
                (VirtqueueResources resources, ulong features) = _started[index];
                fresh.StartQueue(index, resources, features, state);
            }

            Swaps++;
            return [.. states.Select(s => s.State)];
        }
    }

    public void Dispose() => Inner.Dispose();

    private void Subscribe(IVirtioDevice device)
    {
        device.ConfigChanged += OnConfigChanged;
        device.Faulted += OnFaulted;
    }

    private void Unsubscribe(IVirtioDevice device)
    {
        device.ConfigChanged -= OnConfigChanged;
        device.Faulted -= OnFaulted;
    }

    private void OnConfigChanged() => ConfigChanged?.Invoke();

    private void OnFaulted(DeviceFault fault) => Faulted?.Invoke(fault);
}
