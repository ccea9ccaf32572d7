namespace Vmm.VhostUser.Conformance;

// The last check: a front-end that reconnects (after its own restart, or QEMU's reconnect=N)
// meets the back-end again on the same socket.
internal sealed partial class ConformanceRun
{
    private async Task<Verdict> CheckSecondConnectionAsync(CancellationToken cancellationToken)
    {
        try
        {
            await ReconnectAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            return Verdict.Fail(
                $"no front-end could connect within {Timeout.TotalSeconds:0.###} s after the first connection closed ({e.Message}): " +
                "a back-end that serves one front-end and exits cannot serve a reconnecting one");
        }

        await HandshakeAsync(cancellationToken).ConfigureAwait(false);
        if (!Probe.HasRequests)
        {
            await StartRingsAsync(cancellationToken).ConfigureAwait(false);
            return Verdict.Pass("after the first connection closed, a second one was accepted: handshake and ring set-up completed");
        }

        await StartRingsAsync(cancellationToken).ConfigureAwait(false);
        string? error = await ProbeOnceAsync(null, cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass("after the first connection closed, a second one was accepted: handshake, ring set-up and a request completed")
            : Verdict.Fail($"a second connection was accepted and set up, then {error}");
    }
}
