namespace Vmm.Virtio.Driver;

/// <summary>An <see cref="IGuestBufferPool"/> over the guest driver's <see cref="GuestMemoryAllocator"/>.</summary>
public sealed class GuestBufferPool : IGuestBufferPool
{
    private readonly GuestMemoryAllocator _allocator;

    public GuestBufferPool(GuestMemoryAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(allocator);
        _allocator = allocator;
    }

    public ulong Rent(int size)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        return _allocator.Allocate((ulong)size, 16);
    }

    public void Return(ulong address, int size) => _allocator.Free(address);
}
