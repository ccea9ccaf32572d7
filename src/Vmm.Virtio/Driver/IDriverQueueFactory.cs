using Vmm.Core.Memory;

namespace Vmm.Virtio.Driver;

/// <summary>
/// Makes the driver side of a queue: allocates its rings in guest memory and lays them out for
/// the negotiated features (split or packed, indirect, EVENT_IDX). The guest driver's only
/// dependency on the ring implementation.
/// </summary>
public interface IDriverQueueFactory
{
    IDriverQueue Create(int queueIndex, ushort size, ulong negotiatedFeatures);
}

/// <summary>A factory from a delegate.</summary>
public sealed class DelegateDriverQueueFactory : IDriverQueueFactory
{
    private readonly Func<int, ushort, ulong, IDriverQueue> _create;

    public DelegateDriverQueueFactory(Func<int, ushort, ulong, IDriverQueue> create)
    {
        _create = create ?? throw new ArgumentNullException(nameof(create));
    }

    public IDriverQueue Create(int queueIndex, ushort size, ulong negotiatedFeatures) => _create(queueIndex, size, negotiatedFeatures);
}

/// <summary>Queues from <see cref="DriverQueue.Create"/>, with rings from <paramref name="allocator"/>.</summary>
public sealed class GuestDriverQueueFactory(GuestMemory memory, GuestMemoryAllocator allocator) : IDriverQueueFactory
{
    public IDriverQueue Create(int queueIndex, ushort size, ulong negotiatedFeatures) =>
        DriverQueue.Create(memory, allocator, size, negotiatedFeatures);
}
