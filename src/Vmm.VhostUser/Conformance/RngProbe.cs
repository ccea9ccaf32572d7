using Vmm.Virtio.Driver;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Conformance;

/// <summary>virtio-rng (virtio 1.2, 5.4): device-writable buffers filled with entropy.</summary>
internal sealed class RngProbe : DeviceProbe
{
    private const int RequestBytes = 64;
    private const int ProbeBytes = 16;

    public RngProbe()
        : base(VirtioDeviceId.Entropy)
    {
    }

    public override string RequestSpec => "virtio 1.2 §5.4.6";

    public override string RequestTitle => "A real request: an rng read";

    public override async Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken)
    {
        uint written = 0;
        ProbeRequest request = SubmitRead(run, run.Pool, RequestBytes, n => written = n);
        request.Ring.Notify();
        string? error = await run.CompleteAsync(request, cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass($"a {RequestBytes}-byte buffer came back with {written} bytes of entropy")
            : Verdict.Fail(error);
    }

    public override ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data) => SubmitRead(run, data, ProbeBytes, null);

    private ProbeRequest SubmitRead(ConformanceRun run, IGuestBufferPool pool, int size, Action<uint>? written)
    {
        ProbeRing ring = run.Ring(ProbeRingIndex);
        ulong buffer = Rent(run, pool, size);
        object token = new();
        Submit(ring, [new DriverBuffer(buffer, (uint)size, true)], token);
        return new ProbeRequest(ring, token, $"a {size}-byte rng read", completion =>
        {
            uint n = completion.BytesWritten;
            if (n == 0 || n > size)
            {
                return $"the device reported {n} bytes written into a {size}-byte buffer (virtio 1.2, 5.4.6.2: at least one, at most the buffer)";
            }

            byte[] bytes = new byte[n];
            run.Memory.Read(buffer, bytes);
            pool.Return(buffer, size);
            if (n >= 8 && !bytes.AsSpan().ContainsAnyExcept((byte)0))
            {
                return $"the {n} bytes written are all zero";
            }

            written?.Invoke(n);
            return null;
        });
    }
}
