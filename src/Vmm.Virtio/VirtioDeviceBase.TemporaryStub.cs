using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio;

// Temporary stand-in with the agreed signature until the real base class is merged; deleted then.
public abstract class VirtioDeviceBase : IVirtioDevice
{
    public const ulong SupportedRingFeatures = VirtioFeatures.RING_INDIRECT_DESC | VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_PACKED;

    private readonly ushort _maxQueueSize;

    protected VirtioDeviceBase(VirtioDeviceId id, ulong deviceFeatures, int queueCount, ushort maxQueueSize)
    {
        DeviceId = id;
        DeviceFeatures = deviceFeatures;
        QueueCount = queueCount;
        _maxQueueSize = maxQueueSize;
    }

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted;

    public VirtioDeviceId DeviceId { get; }

    public ulong DeviceFeatures { get; }

    public int QueueCount { get; }

    public abstract int ConfigSize { get; }

    public ushort GetMaxQueueSize(int index) => _maxQueueSize;

    public abstract void ReadConfig(uint offset, Span<byte> data);

    public abstract void WriteConfig(uint offset, ReadOnlySpan<byte> data);

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null) =>
        throw new NotSupportedException();

    public VirtqueueState? StopQueue(int index) => null;

    public void Reset() => OnReset();

    public virtual byte[] SaveState() => [];

    public virtual void RestoreState(ReadOnlySpan<byte> state)
    {
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
    }

    protected abstract uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory);

    protected virtual void OnReset()
    {
    }

    protected void RaiseConfigChanged() => ConfigChanged?.Invoke();

    protected void RaiseFaulted(DeviceFault fault) => Faulted?.Invoke(fault);
}
