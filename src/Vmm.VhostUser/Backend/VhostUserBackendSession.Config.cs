using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

public sealed partial class VhostUserBackendSession
{
    /// <summary>
    /// GET_CONFIG: the reply echoes the request's offset, size and flags with the bytes read.
    /// A range outside the device's config space gets a reply with no payload, which the spec
    /// defines as the error answer ("uses zero length of payload to indicate an error").
    /// </summary>
    private Reply GetConfig(ReadOnlySpan<byte> payload)
    {
        VhostUserConfigMessage request = VhostUserConfig.Parse(payload);
        uint offset = request.Header.Offset;
        uint size = request.Header.Size;
        if (!Has(VhostUserProtocolFeatures.CONFIG))
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.GET_CONFIG), "protocol feature CONFIG was not negotiated");
            return Reply.Payload(0);
        }

        if (!ConfigRangeValid(offset, size))
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.GET_CONFIG), $"range [{offset}, +{size}) is outside the {_device.ConfigSize}-byte config space");
            return Reply.Payload(0);
        }

        var header = new VhostUserConfig(offset, size, request.Header.Flags);
        header.Write(_replyBuffer);
        _device.ReadConfig(offset, _replyBuffer.AsSpan(VhostUserConfig.HeaderSize, (int)size));
        return Reply.Payload(VhostUserConfig.HeaderSize + (int)size);
    }

    private void SetConfig(ReadOnlySpan<byte> payload)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.CONFIG, VhostUserRequest.SET_CONFIG);
        VhostUserConfigMessage request = VhostUserConfig.Parse(payload);
        if (!ConfigRangeValid(request.Header.Offset, request.Header.Size) || request.Data.Length != (int)request.Header.Size)
        {
            throw new RequestRejectedException($"SET_CONFIG range [{request.Header.Offset}, +{request.Header.Size}) is outside the {_device.ConfigSize}-byte config space");
        }

        // Read-only fields are the device's to protect: IVirtioDevice.WriteConfig ignores writes to them.
        _device.WriteConfig(request.Header.Offset, request.Data);
    }

    private bool ConfigRangeValid(uint offset, uint size) =>
        size <= VhostUserConfig.VHOST_USER_MAX_CONFIG_SIZE && offset <= (uint)_device.ConfigSize && size <= (uint)_device.ConfigSize - offset;
}
