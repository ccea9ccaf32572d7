using System.Collections.Concurrent;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Transport;

/// <summary>A device that records what the transport asks of it.</summary>
internal sealed class FakeVirtioDevice : IVirtioDevice
{
    public const ulong DeviceSpecificFeature = 1UL << 5;

    private readonly List<string> _calls = [];

    public VirtioDeviceId DeviceId { get; init; } = VirtioDeviceId.Block;

    public ulong DeviceFeatures { get; init; } = DeviceSpecificFeature | VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_INDIRECT_DESC;

    public int QueueCount { get; init; } = 2;

    public ushort MaxQueueSize { get; init; } = 128;

    public byte[] Config { get; } = [.. Enumerable.Range(0x10, 16).Select(i => (byte)i)];

    public int ConfigSize => Config.Length;

    public ConcurrentDictionary<int, (VirtqueueResources Resources, ulong Features)> Started { get; } = new();

    /// <summary>Called after each config read (to change the configuration mid-read, say).</summary>
    public Action? AfterReadConfig { get; set; }

    public IReadOnlyList<string> Calls
    {
        get
        {
            lock (_calls)
            {
                return [.. _calls];
            }
        }
    }

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted;

    public ushort GetMaxQueueSize(int index) => MaxQueueSize;

    public void ReadConfig(uint offset, Span<byte> data)
    {
        Record($"ReadConfig({offset},{data.Length})");
        data.Clear();
        for (int i = 0; i < data.Length && offset + i < Config.Length; i++)
        {
            data[i] = Config[offset + i];
        }

        AfterReadConfig?.Invoke();
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
        Record($"WriteConfig({offset},{data.Length})");
        for (int i = 0; i < data.Length && offset + i < Config.Length; i++)
        {
            Config[offset + i] = data[i];
        }
    }

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
        Record($"StartQueue({index})");
        Started[index] = (resources, features);
    }

    public VirtqueueState? StopQueue(int index)
    {
        Record($"StopQueue({index})");
        return Started.TryRemove(index, out _) ? new VirtqueueState(0, 0) : null;
    }

    public void Reset()
    {
        Record("Reset");
        Started.Clear();
    }

    public byte[] SaveState() => [];

    public void RestoreState(ReadOnlySpan<byte> state)
    {
    }

    public void RaiseConfigChanged() => ConfigChanged?.Invoke();

    public void RaiseFault(int queue) => Faulted?.Invoke(new DeviceFault(queue, "test fault"));

    public void Dispose()
    {
    }

    private void Record(string call)
    {
        lock (_calls)
        {
            _calls.Add(call);
        }
    }
}

/// <summary>A driver queue with fixed ring addresses and completions the test hands in.</summary>
internal sealed class FakeDriverQueue : IDriverQueue
{
    public FakeDriverQueue(int index, ushort size, ulong features)
    {
        Size = size;
        Features = features;
        ulong b = 0x10000UL * (ulong)(index + 1);
        Params = new VirtqueueParams(size, b, b + 0x1000, b + 0x2000);
    }

    public ulong Features { get; }

    public ushort Size { get; }

    public VirtqueueParams Params { get; }

    public int FreeDescriptors => Size;

    public bool KickWanted { get; set; } = true;

    public ConcurrentQueue<(object Token, uint Written)> Used { get; } = new();

    public List<object> Submitted { get; } = [];

    public bool TrySubmit(ReadOnlySpan<DriverBuffer> buffers, object token)
    {
        Submitted.Add(token);
        return true;
    }

    public bool NeedsKick() => KickWanted;

    public bool TryTakeUsed(out object? token, out uint bytesWritten)
    {
        if (Used.TryDequeue(out var u))
        {
            token = u.Token;
            bytesWritten = u.Written;
            return true;
        }

        token = null;
        bytesWritten = 0;
        return false;
    }

    public bool EnableInterrupts() => !Used.IsEmpty;

    public void DisableInterrupts()
    {
    }
}

internal sealed class FakeQueueFactory : IDriverQueueFactory
{
    public List<FakeDriverQueue> Made { get; } = [];

    public IDriverQueue Create(int queueIndex, ushort size, ulong negotiatedFeatures)
    {
        var q = new FakeDriverQueue(queueIndex, size, negotiatedFeatures);
        lock (Made)
        {
            Made.Add(q);
        }

        return q;
    }
}

/// <summary>A line that counts raises.</summary>
internal sealed class CountingLine
{
    private int _count;

    public CountingLine(int vector = 5)
    {
        Line = new FunctionBackedInterruptLine(vector, _ => Interlocked.Increment(ref _count));
    }

    public InterruptLine Line { get; }

    public int Count => Volatile.Read(ref _count);
}

/// <summary>Records register writes on the way to a window; can hide status bits from reads.</summary>
internal sealed class RecordingMmio(IMmioDevice inner) : IMmioDevice
{
    private readonly List<(ulong Offset, ulong Value)> _writes = [];

    public Func<ulong, Span<byte>, bool>? ReadFilter { get; set; }

    public IReadOnlyList<(ulong Offset, ulong Value)> Writes
    {
        get
        {
            lock (_writes)
            {
                return [.. _writes];
            }
        }
    }

    public void Read(ulong offset, Span<byte> data)
    {
        inner.Read(offset, data);
        ReadFilter?.Invoke(offset, data);
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        ulong v = 0;
        for (int i = data.Length - 1; i >= 0; i--)
        {
            v = (v << 8) | data[i];
        }

        lock (_writes)
        {
            _writes.Add((offset, v));
        }

        inner.Write(offset, data);
    }
}
